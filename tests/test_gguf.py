"""GGUF models served from their own blocks (engine/model/gguf_weights.py, gguf_native.py).

The embedded SmolLM2 file is Q4_1 (its embedding Q8_0); Gemma 3 270M's is Q4_K_M (Q4_K, Q5_0,
Q6_K and Q8_0 tensors). Int4 block types are checked code for code against gguf-py's own
dequantization; whole models against the same file dequantized to float32.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from engine import Engine, load_catalog
from engine.catalog.config import ModelConfig
from engine.catalog.models_file import resolve_source
from engine.model.gguf_native import describe, resolve_quantization
from engine.model.gguf_weights import int4_codes, int4_linear
from engine.model.loader import LoadedModel, assembled_gguf, load_model
from engine.model.packed_linear import LOGITS_GROUP, Int4Linear, Int8Embedding, Int8Linear, is_plain_linear
from tests.greedy import chat_ids, greedy_text
from tests.launch import ROOT, Server

TEXT = (Path(__file__).parent / "data" / "perplexity.txt").read_text(encoding="utf-8")
CATALOG = load_catalog(ROOT / "models.yaml")


def _cfg(name: str, **changes: object) -> ModelConfig:
    cfg = CATALOG.resolve(name)
    assert cfg is not None
    return dataclasses.replace(cfg, max_context=1280, **changes)  # type: ignore[arg-type]


def _gguf(cfg: ModelConfig) -> Path:
    assert cfg.gguf_file is not None
    return assembled_gguf(cfg, CATALOG.cache_dir) if cfg.assemble else resolve_source(cfg) / cfg.gguf_file


def _tensor(cfg: ModelConfig, kind: str) -> tuple[np.ndarray, GGMLQuantizationType]:
    t = next(t for t in GGUFReader(_gguf(cfg)).tensors if t.tensor_type.name == kind)
    return np.asarray(t.data), t.tensor_type


def _check_codes(blocks: np.ndarray, qtype: GGMLQuantizationType) -> None:
    reference = dequantize(blocks, qtype)  # [N, K] float32
    q, scale, zero = int4_codes(blocks, qtype.name)
    n, groups = scale.shape
    ours = (q.reshape(n, groups, 32).astype(np.float32) - 8) * scale[..., None] + zero[..., None]
    np.testing.assert_array_equal(ours.reshape(reference.shape), reference)  # exact, no refit
    kernel = int4_linear(blocks, qtype.name)(torch.eye(reference.shape[1], dtype=torch.bfloat16)).float().T
    torch.testing.assert_close(kernel, torch.from_numpy(reference), rtol=2e-2, atol=1e-2)  # bf16 rounding


def test_q4_0_codes_are_the_files_own() -> None:
    weights = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    _check_codes(quantize(weights, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0)


def test_q4_1_codes_are_the_files_own() -> None:
    _check_codes(*_tensor(_cfg("smollm2"), "Q4_1"))


def test_q4_k_codes_are_the_files_own() -> None:
    _check_codes(*_tensor(_cfg("gemma3"), "Q4_K"))


def test_auto_quantization_is_the_files_own_on_a_cpu_only() -> None:
    assert resolve_quantization("auto", "m.gguf", "auto", "cpu") == "gguf"
    assert resolve_quantization("auto", "m.gguf", "bfloat16", "cpu") == "none"  # a dtype dequantizes
    assert resolve_quantization("auto", "m.gguf", "auto", "cuda") == "none"
    assert resolve_quantization("auto", None, "auto", "cpu") == "none"
    assert resolve_quantization("int4", "m.gguf", "auto", "cpu") == "int4"
    assert describe({"F32": "bfloat16", "Q4_1": "int4"}) == "gguf:Q4_1"
    assert describe({"Q4_K": "int4", "Q6_K": "int8"}) == "gguf:Q4_K,Q6_K>int8"
    with pytest.raises(ValueError, match="quantization gguf needs a gguf_file"):
        ModelConfig(id="m", source="x", quantization="gguf")


def _perplexity(loaded: LoadedModel) -> float:
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"][:, :1024]  # [1, S]
    with torch.inference_mode():
        logits = loaded.model(ids).logits[0, :-1].float()  # [S-1, V]
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model(_cfg("smollm2"), CATALOG.cache_dir)


def test_smollm2_loads_its_q4_1_blocks_and_no_full_precision_weight(smollm2: LoadedModel) -> None:
    model = smollm2.model
    assert smollm2.quantization == "gguf:Q4_1,Q8_0>int8"
    assert smollm2.dtype == torch.bfloat16
    assert not any(is_plain_linear(m) for m in model.modules())
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 30 * 7
    assert isinstance(model.model.embed_tokens, Int8Embedding) and isinstance(model.lm_head, Int8Linear)
    assert model.lm_head.qdata.data_ptr() == model.model.embed_tokens.qdata.data_ptr()  # tied: one copy
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}  # a shared one once
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    assert weight_bytes < 1.02 * _gguf(_cfg("smollm2")).stat().st_size


def test_smollm2_perplexity_is_the_dequantized_files(smollm2: LoadedModel) -> None:
    reference = load_model(_cfg("smollm2", dtype="float32", quantization="none"), CATALOG.cache_dir)
    native, dequantized = _perplexity(smollm2), _perplexity(reference)
    print(f"perplexity: dequantized float32 {dequantized:.3f}, own blocks {native:.3f}")
    assert abs(native / dequantized - 1) < 0.01


def test_smollm2_native_greedy_alone_equals_among_31_others(smollm2: LoadedModel) -> None:
    cfg = _cfg("smollm2", max_batch_size=32)
    engine = Engine(smollm2, cfg)
    engine.start()
    try:
        lean = engine.runner.lean
        assert lean is not None and engine.runner.row_multiple == 1
        assert type(lean.layers[0].qkv.module) is Int4Linear and type(lean.lm_head.module) is Int8Linear
        assert lean.lm_head.module.act_group == LOGITS_GROUP  # the logits' activations per 32
        topics = ["the sea", "bread", "a cat", "winter", "trains", "music", "gardens", "the moon"]
        prompts = [chat_ids(engine, f"Write one sentence about {topics[i % 8]}.") for i in range(32)]

        async def main() -> tuple[list[str], list[str]]:
            alone = [await greedy_text(engine, p, 12, f"solo{i}") for i, p in enumerate(prompts[:4])]
            together = await asyncio.gather(
                *[greedy_text(engine, p, 12, f"mix{i}") for i, p in enumerate(prompts)]
            )
            return alone, list(together)

        alone, together = asyncio.run(main())
    finally:
        engine.shutdown()
    assert together[:4] == alone
    assert together[8:12] == alone  # the same prompts later in the batch


@pytest.fixture(scope="module")
def gemma() -> LoadedModel:
    return load_model(_cfg("gemma3"), CATALOG.cache_dir)


def test_gemma_q4_k_m_loads_its_own_blocks_at_the_files_perplexity(gemma: LoadedModel) -> None:
    assert gemma.quantization == "gguf:Q4_K,Q5_0>int8,Q6_K>int8,Q8_0>int8"
    model = gemma.model
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert not any(is_plain_linear(m) for m in model.modules())
    assert isinstance(model.model.layers[0].self_attn.o_proj, Int4Linear)  # Q4_K
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)  # Q5_0, refitted
    reference = load_model(_cfg("gemma3", dtype="float32", quantization="none"), CATALOG.cache_dir)
    native, dequantized = _perplexity(gemma), _perplexity(reference)
    print(f"perplexity: dequantized float32 {dequantized:.3f}, own blocks {native:.3f}")
    assert abs(native / dequantized - 1) < 0.02


def test_gemma_generic_tokenizer_is_its_own_class_s(gemma: LoadedModel) -> None:
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(gemma.source_dir, local_files_only=True)  # GemmaTokenizer
    assert type(own).__name__ == "GemmaTokenizer" and type(gemma.tokenizer) is not type(own)
    for text in [TEXT, "<start_of_turn>user\nHi  there\t🤖 日本語<end_of_turn>\n", "<bos>x<eos>"]:
        ids = own(text)["input_ids"]
        assert gemma.tokenizer(text)["input_ids"] == ids
        assert gemma.tokenizer.convert_ids_to_tokens(ids) == own.convert_ids_to_tokens(ids)
        assert gemma.tokenizer.decode(ids) == own.decode(ids)
    assert gemma.tokenizer.all_special_ids == own.all_special_ids


def test_gemma_runs_its_own_blocks_on_the_lean_forward(gemma: LoadedModel) -> None:
    engine = Engine(gemma, _cfg("gemma3", max_batch_size=4))
    engine.start()
    try:
        lean = engine.runner.lean
        assert lean is not None and lean.family.name == "Gemma 3"
        assert engine.runner.row_multiple == 1 and engine.runner.graphs is not None  # traced, no padding
        assert type(lean.layers[0].qkv.module) is Int8Linear  # Q5_0 q/k/v, refitted, concatenated
        assert type(lean.layers[0].o.module) is Int4Linear  # Q4_K
        ids = gemma.tokenizer("Question: What is the capital of France?\nAnswer:")["input_ids"]
        text = asyncio.run(greedy_text(engine, ids, 8, "gemma-lean"))
    finally:
        engine.shutdown()
    assert text.startswith(" Paris\n"), text  # transformers' forward over the same blocks: " Paris\nQuestion"


def test_gemma_answers_through_the_server(server: Server, client: openai.OpenAI) -> None:
    prompt = "The capital of France is Paris. The capital of Germany is"
    out = client.completions.create(model="gemma3", prompt=prompt, max_tokens=8, temperature=0)
    assert out.choices[0].text.startswith(" Berlin."), out.choices[0].text
    listed = {m.id: m for m in client.models.list().data}
    assert listed["gemma3-270m"].quantization == "gguf:Q4_K,Q5_0>int8,Q6_K>int8,Q8_0>int8"  # type: ignore[attr-defined]


def test_v1_models_says_what_runs(server: Server, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0
    )
    listed = {m.id: m for m in client.models.list().data}
    assert listed["smollm2-135m-instruct"].quantization == "gguf:Q4_1,Q8_0>int8"  # type: ignore[attr-defined]
    assert listed["gemma3-270m"].quantization in ("auto", "gguf:Q4_K,Q5_0>int8,Q6_K>int8,Q8_0>int8")  # type: ignore[attr-defined]

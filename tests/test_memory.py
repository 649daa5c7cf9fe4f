"""The KV cache budget in tokens (engine.catalog.memory), the device memory given, so it runs on CPU."""

from __future__ import annotations

import pytest
import torch

from engine.catalog.config import ModelConfig
from engine.catalog.memory import CPU_KV_TOKENS, GIB, KVBudgetError, KVShape, fit_tokens
from engine.core.blocks import BLOCK_SIZE

# A 1B Llama-style model: 16 layers, 8 KV heads of 64, bf16: 32 KiB a token.
SHAPE = KVShape(num_layers=16, kv_heads=8, head_dim=64, dtype=torch.bfloat16)


def _cfg(**fields: object) -> ModelConfig:
    return ModelConfig(id="m", source="x", **fields)  # type: ignore[arg-type]


def test_token_bytes_counts_keys_and_values_of_every_layer() -> None:
    assert SHAPE.token_bytes == 2 * 16 * 8 * 64 * 2 == 32 * 1024


def test_the_gpu_budget_is_gpu_memory_utilization_of_the_free_memory() -> None:
    tokens = fit_tokens(SHAPE, _cfg(gpu_memory_utilization=0.5), 4 * GIB, on_gpu=True)
    assert tokens == 2 * GIB // SHAPE.token_bytes == 65536 and tokens % BLOCK_SIZE == 0


def test_the_cpu_budget_is_a_share_of_the_ram_within_the_sequences_asked_for() -> None:
    cfg = _cfg(max_context=4096, max_batch_size=8)
    assert fit_tokens(SHAPE, cfg, 100 * GIB, on_gpu=False) == CPU_KV_TOKENS == 16384  # capped
    assert fit_tokens(SHAPE, _cfg(max_context=1024, max_batch_size=2), 100 * GIB, on_gpu=False) == 2048
    assert fit_tokens(SHAPE, cfg, 2 * GIB, on_gpu=False) == 6544  # a tenth of the RAM, in whole blocks
    assert fit_tokens(SHAPE, cfg, GIB, on_gpu=False) == 4096  # one sequence at least
    assert fit_tokens(SHAPE, _cfg(kv_cache_tokens=5000), 2 * GIB, on_gpu=False) == 5000 // 16 * 16


def test_a_budget_below_one_sequence_is_an_error_that_names_the_field() -> None:
    with pytest.raises(KVBudgetError) as err:
        fit_tokens(SHAPE, _cfg(kv_cache_tokens=1000, max_context=4096), 40 * GIB, on_gpu=True)
    message = str(err.value)
    for hint in ("'m'", "kv_cache_tokens 1000", "max_context 4096"):
        assert hint in message
    with pytest.raises(KVBudgetError, match="gpu_memory_utilization"):
        fit_tokens(SHAPE, _cfg(max_context=4096), GIB // 16, on_gpu=True)


def test_a_budget_the_device_cannot_hold_is_an_error() -> None:
    with pytest.raises(
        KVBudgetError, match=r"kv_cache_tokens 1000000 needs 30.52 GiB.*lower kv_cache_tokens"
    ):
        fit_tokens(SHAPE, _cfg(kv_cache_tokens=1_000_000), 8 * GIB, on_gpu=False)


def test_kv_shape_is_what_the_runner_allocates() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.catalog.memory import kv_shape
    from engine.model.runner import ModelRunner

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    shape = kv_shape(model)
    runner = ModelRunner(model, max_batch=3, max_context=100, num_blocks=9)
    k = runner.cache.k
    assert k.shape == (2, 2, 9, BLOCK_SIZE, 16)
    assert (k.numel() + runner.cache.v.numel()) * k.element_size() == 9 * BLOCK_SIZE * shape.token_bytes

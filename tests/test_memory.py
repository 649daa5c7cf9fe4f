"""The KV cache's GPU memory budget (engine.memory), with the free memory given, so it runs on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.catalog.memory import GIB, KVBudgetError, KVShape, fit_slots, slots_for_device

# A 1B Llama-style model: 16 layers, 8 KV heads of 64, 4096 positions, bf16: 128 MiB a slot.
SHAPE = KVShape(num_layers=16, kv_heads=8, max_len=4096, head_dim=64, dtype=torch.bfloat16)


def test_slot_bytes_counts_keys_and_values_of_every_layer() -> None:
    assert SHAPE.slot_bytes == 2 * 16 * 8 * 4096 * 64 * 2 == 128 * 1024**2


def test_all_asked_slots_fit_when_memory_allows() -> None:
    assert fit_slots(SHAPE, wanted=32, free_bytes=40 * GIB, utilization=0.9, model_id="m") == 32


def test_fewer_slots_when_the_budget_is_short_and_a_warning_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hearth.engine"):
        slots = fit_slots(SHAPE, wanted=64, free_bytes=4 * GIB, utilization=0.5, model_id="m")
    assert slots == 2 * 1024**3 // SHAPE.slot_bytes - 1 == 15
    assert "fits 15 of the 64" in caplog.text


def test_no_room_for_one_sequence_is_an_error_that_says_what_to_change() -> None:
    with pytest.raises(KVBudgetError) as err:
        fit_slots(SHAPE, wanted=8, free_bytes=GIB // 4, utilization=0.9, model_id="big")
    message = str(err.value)
    for hint in ("'big'", "4096 tokens", "gpu_memory_utilization 0.9", "max_context", "dtype"):
        assert hint in message


def test_the_cpu_has_no_budget() -> None:
    assert slots_for_device(SHAPE, 32, torch.device("cpu"), 0.01, "m") == 32


def test_kv_shape_is_what_the_runner_allocates() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.catalog.memory import kv_shape
    from engine.model.runner import ModelRunner

    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    shape = kv_shape(model, max_context=100)
    runner = ModelRunner(model, max_batch=3, max_context=100)
    k = runner.cache.k
    assert k.shape == (2, 4, 2, shape.max_len, 16) and shape.max_len >= 100
    assert (k.numel() + runner.cache.v.numel()) * k.element_size() == 4 * shape.slot_bytes

"""engine.model.decode_graphs (CPU traces), checked on the CPU.

On a CPU, quantized models' decode steps of up to 4 rows replay TorchScript traces: the same
static buffers, buckets, padding rows and block-table attention as the CUDA graphs
tests/test_gpu.py captures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import Engine
from engine.catalog.config import ModelConfig
from engine.model.cpu_traces import CpuTraces
from engine.model.decode_graphs import batch_buckets, kv_buckets
from engine.model.lean import fused
from engine.model.loader import load_model
from tests.greedy import describe_divergence, engine_generate, prompts, running_engine

N_TOKENS = 24


def test_batch_buckets_cover_every_count_up_to_the_slots() -> None:
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(1) == [1]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


def test_kv_buckets_double_up_to_the_cache_length() -> None:
    assert kv_buckets(1024) == [256, 512, 1024]
    assert kv_buckets(4160) == [256, 512, 1024, 2048, 4096, 4160]
    assert kv_buckets(64) == [64]


@pytest.fixture(scope="module")
def int8_eager(smollm2_dir: Path) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy tokens of the int8 model with `cpu_graphs: false`: (6 prompts together, 4 alone)."""
    cfg = ModelConfig(
        id="smollm2", source=str(smollm2_dir), quantization="int8", max_batch_size=6, cpu_graphs=False
    )
    engine = Engine(load_model(cfg, smollm2_dir), cfg)
    engine.start()
    try:
        assert engine.runner.graphs is None  # the setting turns them off
        return _shrinking_batch(engine, smollm2_dir), _alone(engine, smollm2_dir)
    finally:
        engine.shutdown()


def _shrinking_batch(engine: Engine, model_dir: Path) -> list[list[int]]:
    lengths = [N_TOKENS + 4 * i for i in range(6)]  # the batch shrinks from 6 rows to 1
    return [tokens for tokens, _ in engine_generate(engine, prompts(model_dir, 6), lengths)]


def _alone(engine: Engine, model_dir: Path) -> list[list[int]]:
    ids = prompts(model_dir, 4)
    return [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4, together=False)]


def test_traced_decode_steps_give_the_eager_tokens(
    smollm2_dir: Path, int8_eager: tuple[list[list[int]], list[list[int]]]
) -> None:
    """A quantized model (int8 here; int4 runs the same kind of kernel) traces decode steps of up
    to 4 rows and runs bigger ones eagerly: tokens are those of the eager engine, alone and in a
    batch that crosses the switch."""
    with running_engine(smollm2_dir, "cpu", "auto", max_batch=6, quantization="int8") as engine:
        graphs = engine.runner.graphs
        assert isinstance(graphs, CpuTraces)  # on by default
        assert graphs.rows == [1, 2, 4]  # up to CPU_MAX_ROWS
        mixed = _shrinking_batch(engine, smollm2_dir)
        alone = _alone(engine, smollm2_dir)
        assert graphs.failed is None
        assert graphs.replays >= 4 * (N_TOKENS - 1) + 4 * 3  # every step alone, the batch's last ones
        assert {(1, 256), (2, 256), (4, 256)} <= graphs.captured
    want_mixed, want_alone = int8_eager
    assert mixed == want_mixed, describe_divergence("traced vs eager, shrinking batch", mixed, want_mixed)
    assert alone == want_alone, describe_divergence("traced vs eager, alone", alone, want_alone)


@pytest.mark.slow  # two engines a precision, eager and traced: ~25 s each on one core
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_plain_weights_trace_too_and_give_the_eager_tokens(smollm2_dir: Path, dtype: str) -> None:
    """Plain models trace their small decode steps, and their tokens are the eager engine's, alone
    and in a shrinking batch: oneDNN-packed weights (the traces' inputs) from 2 rows (1 row takes
    another oneDNN kernel), bfloat16 and float32 ones on Hearth's own kernel (AVX512-BF16, AVX-512F)
    from 1 row."""
    own_kernel = fused.bf16_dot() if dtype == "bfloat16" else fused.f32_dot()
    tokens = {}
    for traced in (False, True):
        cfg = ModelConfig(
            id="smollm2", source=str(smollm2_dir), dtype=dtype, max_batch_size=6, cpu_graphs=traced
        )
        engine = Engine(load_model(cfg, smollm2_dir), cfg)
        engine.start()
        try:
            tokens[traced] = _shrinking_batch(engine, smollm2_dir), _alone(engine, smollm2_dir)
            graphs = engine.runner.graphs
            if traced:
                assert isinstance(graphs, CpuTraces) and graphs.failed is None
                assert graphs.rows == ([1, 2, 4] if own_kernel else [2, 4])
                assert graphs.replays >= 4 * (N_TOKENS - 1)
            else:
                assert graphs is None
        finally:
            engine.shutdown()
    (mixed, alone), (want_mixed, want_alone) = tokens[True], tokens[False]
    assert mixed == want_mixed, describe_divergence("traced vs eager, shrinking batch", mixed, want_mixed)
    assert alone == want_alone, describe_divergence("traced vs eager, alone", alone, want_alone)

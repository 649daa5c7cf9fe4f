"""The engine on a CUDA GPU, with a small random-weight Llama model (tests/random_llama.py), a tiny
model of every lean family (tests/families.py) and a Q4_K_M GGUF file of a random Llama.

Every test here is marked `gpu` and skips where torch sees no CUDA GPU. `HEARTH_TEST_DEVICE=cpu`
runs the same tests on the CPU (scripts/gpu-check --device cpu does, to check the code paths
on a machine without a GPU). They also skip when no SmolLM2 tokenizer files are found, and the
GGUF tests when `scripts/gpu-check prepare --llama-cpp DIR` has not written the GGUF file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.catalog.config import ModelConfig
from engine.core.engine import Engine
from engine.core.request import EngineStats
from engine.model.cuda_graphs import CudaGraphs
from engine.model.lean import LeanLlama
from engine.model.loader import cpu_has_native_bf16, load_model, pick_dtype
from engine.model.quantize import QuantizationError
from tests import families
from tests.families import CONFIGS, PROMPTS, build, engine_over
from tests.greedy import (
    describe_divergence,
    engine_generate,
    engine_greedy,
    first_divergence,
    hf_greedy,
    prompts,
    running_engine,
)
from tests.random_llama import LlamaSize, build_random_model, find_tokenizer_dir, llama_config

DEVICE = os.environ.get("HEARTH_TEST_DEVICE", "cuda")
N_TOKENS = 24
GGUF_SIZE = LlamaSize(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512, init_std=0.1)
GGUF = Path(__file__).resolve().parent.parent / ".gpu-assets" / "gguf" / "tiny-q4_k_m.gguf"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        pytest.skip("no SmolLM2 tokenizer files (.gpu-assets/tokenizer or ~/.cache/hearth)")
    return build_random_model(tmp_path_factory.mktemp("random-llama"), tokenizer, llama_config(GGUF_SIZE))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> list[list[int]]:
    """Greedy tokens of the first 4 prompts from plain transformers on the CPU in float32."""
    return hf_greedy(model_dir, prompts(model_dir, 4), N_TOKENS, device="cpu", dtype=torch.float32)


def settled_stats(engine: Engine, timeout: float = 5.0) -> EngineStats:
    """The engine's counters once nothing runs: a request's last delta is sent before its slot is freed."""
    deadline = time.monotonic() + timeout
    while engine.stats.running and time.monotonic() < deadline:
        time.sleep(0.01)
    return engine.stats


def test_engine_float32_on_device_matches_cpu_reference(model_dir: Path, reference: list[list[int]]) -> None:
    got = engine_greedy(model_dir, prompts(model_dir, 4), N_TOKENS, device=DEVICE, dtype="float32")
    assert got == reference, describe_divergence(
        f"engine {DEVICE} float32 vs transformers cpu", got, reference
    )


def test_auto_dtype_and_kv_cache_live_on_the_device(model_dir: Path) -> None:
    want = pick_dtype("auto", torch.device(DEVICE))
    cpu_auto = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert want == (cpu_auto if DEVICE == "cpu" else torch.bfloat16)
    with running_engine(model_dir, DEVICE, "auto") as engine:
        param = next(engine.model.parameters())
        assert (param.device.type, param.dtype) == (DEVICE, want)
        cache = engine.runner.cache
        assert (cache.k.device.type, cache.k.dtype) == (DEVICE, want)
        assert (cache.v.device.type, cache.v.dtype) == (DEVICE, want)
        [(tokens, finish)] = engine_generate(engine, prompts(model_dir, 1), [N_TOKENS])
    assert finish == "length"
    assert len(tokens) == N_TOKENS


def test_eight_concurrent_requests_all_finish_in_bf16(model_dir: Path) -> None:
    ids = prompts(model_dir, 8)
    lengths = [8 + 4 * i for i in range(8)]
    with running_engine(model_dir, DEVICE, "auto", max_batch=8) as engine:
        results = engine_generate(engine, ids, lengths, together=True)
        stats = settled_stats(engine)
    assert [finish for _, finish in results] == ["length"] * 8
    assert [len(tokens) for tokens, _ in results] == lengths
    assert (stats.finished, stats.failed, stats.running, stats.waiting) == (8, 0, 0, 0)


def test_batched_greedy_equals_solo_in_float32(model_dir: Path) -> None:
    """Batch invariance on the device: a request's greedy tokens don't depend on its neighbours."""
    ids = prompts(model_dir, 8)
    lengths = [N_TOKENS] * 8
    with running_engine(model_dir, DEVICE, "float32", max_batch=8) as engine:
        solo = [tokens for tokens, _ in engine_generate(engine, ids, lengths, together=False)]
        together = [tokens for tokens, _ in engine_generate(engine, ids, lengths, together=True)]
    diverged = [p for p in range(8) if first_divergence(together[p], solo[p]) is not None]
    assert not diverged, describe_divergence("batched vs solo", together, solo)


@pytest.mark.skipif(
    DEVICE == "cpu", reason="CUDA graphs' buckets; a CPU's decode traces are tested in test_decode_graphs"
)
def test_decode_steps_replay_cuda_graphs_with_the_reference_output(
    model_dir: Path, reference: list[list[int]]
) -> None:
    """Decode steps go through captured graphs and give the
    float32 reference, batched and alone; a bigger batch takes a bigger bucket."""
    ids = prompts(model_dir, 4)
    with running_engine(model_dir, DEVICE, "float32", max_batch=8, graphs=True) as engine:
        graphs = engine.runner.graphs
        assert graphs is not None and isinstance(graphs, CudaGraphs) == (DEVICE == "cuda")
        together = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4)]
        alone = [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 4, together=False)]
        eight = engine_generate(engine, prompts(model_dir, 8), [N_TOKENS] * 8)
        assert graphs.failed is None
        assert graphs.replays >= 6 * (N_TOKENS - 1)  # decode steps: 1 + 4 + 1 batches
        assert {(4, 256), (1, 256), (8, 256)} <= graphs.captured
    assert together == reference, describe_divergence(
        "graphs together vs transformers cpu", together, reference
    )
    assert alone == reference, describe_divergence("graphs alone vs transformers cpu", alone, reference)
    assert [tokens for tokens, _ in eight][:4] == reference


def test_graphs_are_on_by_default_on_cuda(model_dir: Path) -> None:
    with running_engine(model_dir, DEVICE, "auto") as engine:
        [(tokens, _)] = engine_generate(engine, prompts(model_dir, 1), [N_TOKENS])
        graphs = engine.runner.graphs
        if DEVICE == "cuda":
            assert graphs is not None and graphs.replays >= N_TOKENS - 1 and graphs.failed is None
        else:
            assert not isinstance(graphs, CudaGraphs)  # a CPU may record traces (test_decode_graphs)
    assert len(tokens) == N_TOKENS


@pytest.fixture(scope="module")
def family_tokenizer() -> Any:
    from transformers import AutoTokenizer

    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        pytest.skip("no SmolLM2 tokenizer files (.gpu-assets/tokenizer or ~/.cache/hearth)")
    return AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_lean_family_on_the_device_gives_transformers_greedy_tokens(
    name: str, family_tokenizer: Any
) -> None:
    """float32 on the device, decode steps from CUDA graphs where the family takes them (all but the
    mixture of experts, whose expert row counts are read on the host), on Hearth's GPU kernels
    (engine.model.lean.gpu_kernels), against transformers on the CPU; batched and alone alike."""
    model = build(name)
    want = families.reference(model, PROMPTS, 8)
    with engine_over(model, family_tokenizer, device=DEVICE) as engine:
        lean = engine.runner.lean
        assert isinstance(lean, LeanLlama) and lean.gpu == (DEVICE == "cuda")
        got = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [8] * len(PROMPTS))]
        alone = [tokens for tokens, _ in engine_generate(engine, PROMPTS, [8] * len(PROMPTS), False)]
        graphs = engine.runner.graphs
        if DEVICE == "cuda" and name != "qwen3_moe":
            assert isinstance(graphs, CudaGraphs) and graphs.failed is None and graphs.replays >= 7
    assert got == want, describe_divergence(f"{name} on {DEVICE} vs transformers cpu", got, want)
    assert alone == got


def gguf_config(device: str, dtype: str, quantization: str = "auto") -> ModelConfig:
    if not GGUF.is_file():
        pytest.skip(f"no {GGUF.name}: `scripts/gpu-check prepare --llama-cpp DIR` writes it")
    return ModelConfig(
        id="tiny-gguf",
        source=str(GGUF.parent),
        gguf_file=GGUF.name,
        dtype=dtype,
        device=device,
        max_context=1024,
        max_batch_size=4,
        quantization=quantization,
    )


def gguf_greedy(cfg: ModelConfig, cache: Path) -> tuple[Engine, list[list[int]]]:
    engine = Engine(load_model(cfg, cache), cfg)
    engine.start()
    try:
        ids = [engine.tokenizer.encode(q) for q in ("The capital of France is", "Once upon a time")]
        return engine, [tokens for tokens, _ in engine_generate(engine, ids, [N_TOKENS] * 2)]
    finally:
        engine.shutdown()


def test_a_gguf_model_on_the_device_runs_dequantized_with_the_cpu_greedy_tokens(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a GPU a GGUF file is dequantized once (cached as safetensors) and runs as a plain model:
    float32 on the device gives the CPU's float32 tokens; `auto` is bfloat16 with CUDA graphs."""
    cache = tmp_path_factory.mktemp("gguf-cache")
    _, want = gguf_greedy(gguf_config("cpu", "float32", "none"), cache)
    engine, got = gguf_greedy(gguf_config(DEVICE, "float32"), cache)
    assert engine.quantization == "none"
    assert got == want, describe_divergence(f"gguf {DEVICE} vs cpu float32", got, want)
    if DEVICE == "cuda":
        engine, tokens = gguf_greedy(gguf_config(DEVICE, "auto"), cache)
        assert (engine.runner.dtype, engine.quantization) == (torch.bfloat16, "none")
        graphs = engine.runner.graphs
        assert isinstance(graphs, CudaGraphs) and graphs.replays >= N_TOKENS - 1 and graphs.failed is None
        assert [len(t) for t in tokens] == [N_TOKENS] * 2


@pytest.mark.skipif(DEVICE == "cpu", reason="on a CPU `gguf` is the native path (tests/test_gguf.py)")
def test_a_gguf_model_on_the_device_refuses_native_blocks_and_runs_int4(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`quantization: gguf` (the CPU kernels) is refused on a GPU with the advice; `int4` refits the
    dequantized weights to the device's int4 kernel and generates."""
    cache = tmp_path_factory.mktemp("gguf-cache")
    with pytest.raises(QuantizationError, match="runs on a CPU"):
        load_model(gguf_config(DEVICE, "auto", "gguf"), cache)
    engine, tokens = gguf_greedy(gguf_config(DEVICE, "auto", "int4"), cache)
    assert engine.quantization == "int4"
    assert [len(t) for t in tokens] == [N_TOKENS] * 2

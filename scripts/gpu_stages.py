"""The in-process stages of scripts/gpu_check.py: `stage env`, `stage compare`, `stage build`,
`stage steps`.

Each runs in its own process (so a hang or a CUDA fault stays inside its stage) and prints
markdown that the check appends to its report.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scripts.gpu_check import FAMILIES
from tests.greedy import engine_greedy, first_divergence, hf_greedy, prompts
from tests.random_llama import (
    ONE_B,
    SMALL,
    TINY,
    build_random_model,
    find_tokenizer_dir,
    gemma3_1b_config,
    llama_config,
    parameters,
    qwen3_1b_config,
)

SIZES = {"tiny": TINY, "small": SMALL, "1b": ONE_B}
HBM_TB_S = {"H200": 4.8, "H100": 3.35, "A100": 2.0}  # nominal memory bandwidth by GPU name, TB/s
PACKAGES = (
    "torch", "transformers", "tokenizers", "safetensors", "accelerate", "huggingface_hub", "numpy",
    "starlette", "uvicorn", "pydantic", "fastapi", "openai", "httpx", "jinja2", "pytest",
)  # fmt: skip


def env() -> int:
    """Python, GPU, torch and package versions, and whether `transformers serve` can start."""
    print(f"python {platform.python_version()} at {sys.executable}")
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,memory.used,driver_version"
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        print(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(
            f"gpu {props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}, "
            f"{props.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}, "
            f"matmul tf32 {torch.backends.cuda.matmul.allow_tf32}"
        )
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "MISSING"
        print(f"{name:16} {version}")
    import transformers
    from transformers.utils.import_utils import is_serve_available

    print(f"transformers from {Path(transformers.__file__).parent}")
    print(f"transformers serve available: {is_serve_available()}")
    import server.app  # noqa: F401  (Hearth's server imports: starlette, uvicorn, pydantic)

    print("hearth server imports: ok")
    from engine.model.lean import fused

    start = time.perf_counter()
    built = fused.available()  # the CPU reference runs use them: built once here, outside the tests
    print(f"hearth CPU kernels: {'built' if built else 'UNAVAILABLE'} in {time.perf_counter() - start:.1f} s")
    return 0


Run = tuple[str, str, str]  # who, device ("DEVICE": the check's), dtype
FULL_RUNS = (
    ("transformers", "cpu", "float32"),  # the reference
    ("transformers", "DEVICE", "float32"),
    ("hearth", "cpu", "float32"),
    ("hearth", "DEVICE", "float32"),
    ("hearth-eager", "DEVICE", "float32"),  # no CUDA graphs
    ("transformers", "DEVICE", "bfloat16"),
    ("hearth", "DEVICE", "bfloat16"),
)
SHORT_RUNS = (FULL_RUNS[0], FULL_RUNS[3], FULL_RUNS[5], FULL_RUNS[6])  # for ~1 B models


def compare(device: str, size: str, n: int, count: int, models: list[Path]) -> int:
    """Greedy tokens from transformers and Hearth, per device and dtype, against transformers/cpu/float32:
    of a random Llama of `size` built here (every run), or of each folder in `models` (the short list)."""
    if models:
        ok = [compare_one(model_dir, device, n, count, SHORT_RUNS) for model_dir in models]
        return 0 if all(ok) else 1
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        print("no SmolLM2 tokenizer files (.gpu-assets/tokenizer): run `scripts/gpu-check prepare` first")
        return 1
    with tempfile.TemporaryDirectory(prefix="hearth-compare-") as tmp:
        start = time.perf_counter()
        model_dir = build_random_model(Path(tmp), tokenizer, llama_config(SIZES[size]))
        params = parameters(llama_config(SIZES[size]))
        print(f"random Llama {size} ({params / 1e6:.0f} M params, seed 0, float32) built")
        print(f"in {time.perf_counter() - start:.1f} s")
        return 0 if compare_one(model_dir, device, n, count, FULL_RUNS) else 1


def compare_one(model_dir: Path, device: str, n: int, count: int, runs: Sequence[Run]) -> bool:
    """Print one table of `runs` (the first is the reference) on `model_dir`; whether every float32
    run on the device gave the reference's tokens."""
    runs = [(who, device if dev == "DEVICE" else dev, dtype) for who, dev, dtype in runs]
    print(f"\n### {model_dir.name}: {count} prompts, {n} greedy tokens each\n")
    ids = prompts(model_dir, count)
    results: dict[tuple[str, str, str], list[list[int]]] = {}
    print("| run | vs | " + " | ".join(f"prompt {p}" for p in range(count)) + " | seconds |")
    print("|---|---|" + "---|" * count + "---:|")
    bf16_ref = ("transformers", device, "bfloat16")
    for run in runs:
        who, dev, dtype = run
        start = time.perf_counter()
        if who == "transformers":
            got = hf_greedy(model_dir, ids, n, device=dev, dtype=getattr(torch, dtype))
        else:
            graphs = None if who == "hearth" else False
            got = engine_greedy(model_dir, ids, n, device=dev, dtype=dtype, graphs=graphs)
        seconds = time.perf_counter() - start
        results[run] = got
        refs = [runs[0]] + ([bf16_ref] if who != "transformers" and dtype == "bfloat16" else [])
        for ref in refs:
            cells = [_cell(g, w) for g, w in zip(got, results[ref], strict=True)]
            print(f"| {who} {dev} {dtype} | {' '.join(ref)} | {' | '.join(cells)} | {seconds:.1f} |")
    print(f"\n`={n}`: all {n} tokens equal; `@i`: first divergence at token i.")
    distinct = len({t for seq in results[runs[0]] for t in seq})
    print(f"reference uses {distinct} distinct tokens; prompt 0: {results[runs[0]][0][:16]}")
    f32 = [results[r] == results[runs[0]] for r in runs[1:] if r[2] == "float32"]
    print(f"\nfloat32 runs equal to the reference: {f32.count(True)}/{len(f32)}")
    return all(f32)


def _cell(got: list[int], want: list[int]) -> str:
    i = first_divergence(got, want)
    return f"={len(want)}" if i is None else f"@{i}"


def family_config(family: str, size: str) -> Any:
    """The config of `stage build`'s random `family` model: real shapes scaled to ~1 B parameters for
    `1b`; tests.families' tiny config (or the Llama of `size`) otherwise."""
    if family == "llama":
        return llama_config(SIZES[size])
    if size == "1b":
        return {"qwen3": qwen3_1b_config, "gemma3": gemma3_1b_config}[family]()
    from tests.families import COMMON, CONFIGS

    return CONFIGS[family](COMMON)


def build(device: str, family: str, size: str, out: Path) -> int:
    """Save a random bf16 model of `family` and `size` with the SmolLM2 tokenizer into `out`."""
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        print("no SmolLM2 tokenizer files (.gpu-assets/tokenizer): run `scripts/gpu-check prepare` first")
        return 1
    start = time.perf_counter()
    config = family_config(family, size)
    build_random_model(out, tokenizer, config, dtype=torch.bfloat16, device=device)
    files = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"random {family} {size}: {parameters(config) / 1e9:.3f} B params, bf16, {files / 2**30:.2f} GiB "
        f"in {out}, built on {device} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def steps(device: str, model_dirs: list[Path], tokens: int) -> int:
    """One stream's decode step per model: wall time per token through the engine, device time of a
    replayed CUDA graph alone, and the weights' bytes over the memory bandwidth (the limit)."""
    from tests.greedy import engine_generate, prompts, running_engine

    print("| model | step | kernels per step | tok/s | ms/token | graph replay ms | host ms | limit tok/s "
          "| of limit |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    nominal = next((tb for name, tb in HBM_TB_S.items() if name in _gpu_name()), None)
    for model_dir in model_dirs:
        # Hearth's GPU kernels (engine.model.lean.gpu_kernels), then torch's ops alone (the step before)
        for label, switch in (("GPU kernels", "1"), ("torch ops", "0")):
            os.environ["HEARTH_GPU_KERNELS"] = switch  # read when the lean forward is built
            with running_engine(model_dir, device, "bfloat16", max_batch=8) as engine:
                ids = prompts(model_dir, 1)
                engine_generate(engine, ids, [16])  # warm-up: the (1, 256) bucket is captured
                start = time.perf_counter()
                engine_generate(engine, ids, [tokens])
                per_token = (time.perf_counter() - start) / tokens
                replay_ms = _replay_ms(engine)
                kernels = _kernel_count(engine)
            weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))  # bf16, as served
            gc.collect()  # the next engine sizes its KV cache from the memory left free
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            limit = nominal * 1e12 / weights if nominal else float("nan")
            replay = f"{replay_ms:.3f}" if replay_ms else "-"
            host = f"{per_token * 1e3 - replay_ms:.3f}" if replay_ms else "-"
            print(
                f"| {model_dir.name} | {label} | {kernels or '-'} | {1 / per_token:.0f} | "
                f"{per_token * 1e3:.3f} | {replay} | {host} | {limit:.0f} | {1 / per_token / limit:.0%} |"
            )
    os.environ.pop("HEARTH_GPU_KERNELS", None)
    print(f"\n{tokens} tokens of one greedy request per model (prompt ~20 tokens), bf16; limit: weights "
          f"read once per token at the nominal {nominal} TB/s of {_gpu_name()}.")  # fmt: skip
    return 0


def _kernel_count(engine: Any, n: int = 5) -> int:
    """Kernels per replay of the one-row CUDA graph (torch's profiler; 0 when there is none)."""
    rows = _graph_kernels(engine, n)
    return 0 if rows is None else round(sum(e.count for e in rows) / n)


def _graph_kernels(engine: Any, n: int) -> list[Any] | None:
    """torch's profiler over `n` replays of the one-row CUDA graph: its kernels' averages, or None
    when there is no such graph."""
    graphs = engine.runner.graphs
    replay = getattr(graphs, "_replays", {}).get((1, 256))
    if replay is None or not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            replay(graphs._inputs)
        torch.cuda.synchronize()
    return [e for e in prof.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]


def _gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _replay_ms(engine: Any, n: int = 200) -> float:
    """Milliseconds per replay of the one-row CUDA graph, back to back (0 when there is none)."""
    graphs = engine.runner.graphs
    replay = getattr(graphs, "_replays", {}).get((1, 256))
    if replay is None or not torch.cuda.is_available():
        return 0.0
    inputs = graphs._inputs
    for _ in range(10):
        replay(inputs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        replay(inputs)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def run_stage_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check stage")
    p.add_argument("name", choices=("env", "compare", "build", "steps", "graphs"))
    p.add_argument("--family", default="llama", choices=FAMILIES)
    p.add_argument("--models", type=Path, nargs="*", default=[], help="compare, steps: model folders")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="small", choices=tuple(SIZES))
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.name == "env":
        return env()
    if args.name == "compare":
        return compare(args.device, args.size, args.tokens, args.prompts, args.models)
    if args.name == "steps":
        return steps(args.device, args.models, args.tokens)
    if args.name == "graphs":
        return graphs_experiment(args.device, args.models[0], args.tokens)
    if args.out is None:
        p.error("build needs --out")
    return build(args.device, args.family, args.size, args.out)


# ---------------------------------------------------------------- experiment: compiled decode graphs


def graphs_experiment(device: str, model_dir: Path, tokens: int) -> int:
    """One stream of `model_dir` in bf16: the kernels of its replayed one-row decode graph (torch's
    profiler), then the same step compiled by torch.compile (inductor, fixed shapes) before capture."""
    import functools

    from engine.model.cuda_graphs import CudaGraphs
    from engine.model.decode_graphs import DecodeGraphs
    from tests.greedy import engine_generate, prompts, running_engine

    class Compiled(DecodeGraphs):
        """Each bucket's step compiled (fullgraph, static shapes) before it is recorded."""

        compile_seconds = 0.0

        def _step(self, rows: int, kv: int, inputs: torch.Tensor) -> torch.Tensor:
            fns = self.__dict__.setdefault("_compiled", {})
            if (rows, kv) not in fns:
                start = time.perf_counter()
                step = functools.partial(DecodeGraphs._step, self, rows, kv)
                fns[rows, kv] = torch.compile(step, dynamic=False, fullgraph=True)
                out = fns[rows, kv](inputs)
                self.compile_seconds += time.perf_counter() - start
                return out
            return fns[rows, kv](inputs)

    class Eager(DecodeGraphs):  # a CPU's stand-in for CUDA graphs (a dry run of this stage)
        def _record(self, rows: int, kv: int) -> Any:
            return lambda inputs: self._step(rows, kv, inputs)

    base: type[DecodeGraphs] = CudaGraphs if device == "cuda" else Eager
    kind = type("CompiledGraphs", (Compiled, base), {})
    # a small KV cache: were a compiled step to copy the cache it writes to, the copy stays small
    with running_engine(model_dir, device, "bfloat16", max_batch=8, kv_cache_tokens=8192) as engine:
        runner = engine.runner
        ids = prompts(model_dir, 1)
        if runner.graphs is None:  # CPU dry run: recordings of the plain forward
            runner.graphs = base(
                runner.lean.forward, runner.cache, runner.max_batch, 256, window=runner.window_cache
            )
        engine_generate(engine, ids, [16])
        start = time.perf_counter()
        [(want, _)] = engine_generate(engine, ids, [tokens])
        eager_ms = (time.perf_counter() - start) / tokens * 1e3
        replay_ms = _replay_ms(engine)
        print(f"graphs: {eager_ms:.3f} ms/token, replay {replay_ms:.3f} ms\n")
        _profile(engine)
        graphs = kind(runner.lean.forward, runner.cache, runner.max_batch, 256, window=runner.window_cache)
        runner.graphs = graphs
        start = time.perf_counter()
        engine_generate(engine, ids, [16])
        seconds = time.perf_counter() - start
        print(f"\ncompiled + captured in {seconds:.1f} s ({graphs.compile_seconds:.1f} s compiling)")
        start = time.perf_counter()
        [(got, _)] = engine_generate(engine, ids, [tokens])
        compiled_ms = (time.perf_counter() - start) / tokens * 1e3
        compiled_replay = _replay_ms(engine)
        print(f"compiled graphs: {compiled_ms:.3f} ms/token, replay {compiled_replay:.3f} ms")
        i = first_divergence(got, want)
        print(f"compiled greedy tokens vs uncompiled (bf16): {'equal' if i is None else f'diverge at {i}'}")
        _profile(engine)
    return 0


def _profile(engine: Any, n: int = 10) -> None:
    """The kernels of `n` replays of the one-row graph: count per step and the top ten by time."""
    rows = _graph_kernels(engine, n)
    if rows is None:
        print("(no CUDA graph to profile)")
        return
    rows.sort(key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in rows) / n
    count = sum(e.count for e in rows) / n
    print(f"{count:.0f} kernels per step, {total:.0f} us of kernel time per step; the top ten:")
    print("| kernel | per step | us per step |\n|---|---:|---:|")
    for e in rows[:10]:
        print(f"| {e.key[:70]} | {e.count / n:.0f} | {e.self_device_time_total / n:.1f} |")

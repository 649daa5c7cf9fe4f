"""The in-process stages of scripts/gpu_check.py: `stage env`, `stage compare`, `stage build`.

Each runs in its own process (so a hang or a CUDA fault stays inside its stage) and prints
markdown that the check appends to its report.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tests.greedy import engine_greedy, first_divergence, hf_greedy, prompts
from tests.random_llama import ONE_B, SMALL, TINY, build_random_llama, find_tokenizer_dir, param_count

SIZES = {"tiny": TINY, "small": SMALL, "1b": ONE_B}
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
    return 0


def compare(device: str, size: str, n: int, count: int) -> int:
    """Greedy tokens from transformers and Hearth, per device and dtype, against transformers/cpu/float32."""
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        print("no SmolLM2 tokenizer files (.gpu-assets/tokenizer): run `scripts/gpu-check prepare` first")
        return 1
    with tempfile.TemporaryDirectory(prefix="hearth-compare-") as tmp:
        start = time.perf_counter()
        model_dir = build_random_llama(Path(tmp), tokenizer, SIZES[size])
        print(f"random Llama {size} ({param_count(SIZES[size]) / 1e6:.0f} M params, seed 0, float32) built")
        print(f"in {time.perf_counter() - start:.1f} s; {count} prompts, {n} greedy tokens each\n")
        ids = prompts(model_dir, count)
        runs = [
            ("transformers", "cpu", "float32"),
            ("transformers", device, "float32"),
            ("hearth", "cpu", "float32"),
            ("hearth", device, "float32"),
            ("hearth-eager", device, "float32"),  # no CUDA graphs
            ("transformers", device, "bfloat16"),
            ("hearth", device, "bfloat16"),
        ]
        results: dict[tuple[str, str, str], list[list[int]]] = {}
        print("| run | vs | " + " | ".join(f"prompt {p}" for p in range(count)) + " | seconds |")
        print("|---|---|" + "---|" * count + "---:|")
        for run in runs:
            who, dev, dtype = run
            start = time.perf_counter()
            if who == "transformers":
                got = hf_greedy(model_dir, ids, n, device=dev, dtype=getattr(torch, dtype))
            else:
                got = engine_greedy(
                    model_dir, ids, n, device=dev, dtype=dtype, graphs=None if who == "hearth" else False
                )
            seconds = time.perf_counter() - start
            results[run] = got
            refs = [runs[0]] + ([("transformers", device, "bfloat16")] if run == runs[-1] else [])
            for ref in refs:
                cells = [_cell(g, w) for g, w in zip(got, results[ref], strict=True)]
                print(f"| {who} {dev} {dtype} | {' '.join(ref)} | {' | '.join(cells)} | {seconds:.1f} |")
        print(f"\n`={n}`: all {n} tokens equal; `@i`: first divergence at token i.")
        distinct = len({t for seq in results[runs[0]] for t in seq})
        print(f"reference uses {distinct} distinct tokens; prompt 0: {results[runs[0]][0][:16]}")
        f32 = [results[r] == results[runs[0]] for r in runs[1:5]]
        print(f"\nfloat32 runs equal to the reference: {f32.count(True)}/{len(f32)}")
    return 0 if all(f32) else 1


def _cell(got: list[int], want: list[int]) -> str:
    i = first_divergence(got, want)
    return f"={len(want)}" if i is None else f"@{i}"


def build(device: str, size: str, out: Path) -> int:
    """Save a random bf16 Llama of `size` with the SmolLM2 tokenizer into `out`."""
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        print("no SmolLM2 tokenizer files (.gpu-assets/tokenizer): run `scripts/gpu-check prepare` first")
        return 1
    start = time.perf_counter()
    build_random_llama(out, tokenizer, SIZES[size], dtype=torch.bfloat16, device=device)
    files = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"random Llama {size}: {param_count(SIZES[size]) / 1e9:.3f} B params, bf16, {files / 2**30:.2f} GiB "
        f"in {out}, built on {device} in {time.perf_counter() - start:.1f} s"
    )
    return 0


def run_stage_command(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check stage")
    p.add_argument("name", choices=("env", "compare", "build"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="small", choices=tuple(SIZES))
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.name == "env":
        return env()
    if args.name == "compare":
        return compare(args.device, args.size, args.tokens, args.prompts)
    if args.out is None:
        p.error("build needs --out")
    return build(args.device, args.size, args.out)

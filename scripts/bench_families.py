"""One-stream decode speed of every lean family against the Llama-shaped model of the same sizes.

    python -m scripts.bench_families [--tokens 64] [--dtype float32] [--quantization none] [--families a,b]
    python -m scripts.bench_families --catalog-model gemma3-270m [--dtype bfloat16] [--quantization int4]

Builds a small random-weight model of each family (tests.families, at `SIZES`: 8 layers, hidden
512, 8 heads over 2 kv heads, head_dim 64, MLP 1536) and the plain Llama of the same sizes, serves
each from an in-process `Engine` (all loaded at once, idle but for the one measured) and streams
`--tokens` greedy tokens after a 16-token prompt, one request at a time, the families taking turns
for `--runs` rounds (a busy machine slows all alike). Prints a Markdown table: tok/s (after the
first token, best of the rounds), and each family's ratio to the Llama of the same invocation.
Needs the SmolLM2 tokenizer (tests.random_llama.find_tokenizer_dir).

With `--catalog-model`, the same one-stream measure runs one model of the catalog (models.yaml)
twice, on the lean forward and on transformers' forward (the path a model outside the lean
families takes), taking turns.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack
from typing import Any

import torch

from engine import load_catalog
from engine.core.engine import Engine
from engine.core.request import SamplingParams
from engine.model.loader import load_model
from tests.families import COMMON, CONFIGS, build, engine_over
from tests.random_llama import find_tokenizer_dir

SIZES: dict[str, Any] = {
    **COMMON,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "initializer_range": 0.1,
}


def one_stream(engine: Any, tokens: int, runs: int) -> float:
    """Best tok/s over `runs` requests: (tokens - 1) / (time of the last token - time of the first)."""
    prompt = list(range(1000, 1016))

    async def once() -> float:
        params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        stamps: list[float] = []
        async for delta in engine.generate(prompt, params, f"bench-{time.monotonic_ns()}"):
            stamps += [time.perf_counter()] * len(delta.token_ids)
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    return max(asyncio.run(once()) for _ in range(runs))


def catalog_ab(model_id: str, dtype: str, quantization: str, tokens: int, runs: int) -> None:
    """One stream of a catalog model on the lean forward against transformers' forward."""
    import dataclasses
    from pathlib import Path

    catalog = load_catalog(Path(__file__).resolve().parent.parent / "models.yaml")
    cfg = catalog.resolve(model_id)
    if cfg is None:
        raise SystemExit(f"{model_id!r} is not in models.yaml")
    cfg = dataclasses.replace(cfg, dtype=dtype, quantization=quantization, max_batch_size=4)
    speeds = {"lean": 0.0, "transformers": 0.0}
    with ExitStack() as stack:
        engines = {}
        for path in speeds:
            engine = Engine(load_model(cfg, catalog.cache_dir), cfg)
            engine.runner.lean_wanted = path == "lean"
            engine.start()
            stack.callback(engine.shutdown)
            engines[path] = engine
        for round_ in range(runs):
            for path, engine in engines.items():
                speeds[path] = max(speeds[path], one_stream(engine, tokens, 1))
            print(f"round {round_ + 1}: " + ", ".join(f"{p} {v:.1f}" for p, v in speeds.items()), flush=True)
    ratio = speeds["lean"] / speeds["transformers"]
    print(
        f"\n{model_id} ({dtype}, quantization {quantization}), one stream: lean {speeds['lean']:.1f} tok/s, "
        f"transformers' forward {speeds['transformers']:.1f} tok/s ({ratio:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--families", default=",".join(CONFIGS))
    parser.add_argument(
        "--catalog-model", help="A/B one models.yaml model: lean against transformers' forward"
    )
    args = parser.parse_args()
    if args.catalog_model:
        catalog_ab(args.catalog_model, args.dtype, args.quantization, args.tokens, args.runs)
        return
    from transformers import AutoTokenizer

    tokenizer_dir = find_tokenizer_dir()
    if tokenizer_dir is None:
        raise SystemExit("no SmolLM2 tokenizer here: run Hearth once (it converts SmolLM2 into its cache)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    dtype = torch.bfloat16 if args.quantization != "none" else getattr(torch, args.dtype)
    names = ["llama", *[n for n in args.families.split(",") if n]]
    speeds: dict[str, float] = dict.fromkeys(names, 0.0)
    paths: dict[str, str] = {}
    with ExitStack() as stack:
        engines = {}
        for name in names:
            engine = stack.enter_context(
                engine_over(build(name, base=SIZES), tokenizer, dtype, args.quantization)
            )
            lean = engine.runner.lean
            paths[name] = f"lean ({lean.family.name})" if lean is not None else "transformers"
            engines[name] = engine
        for round_ in range(args.runs):
            for name in names:
                speeds[name] = max(speeds[name], one_stream(engines[name], args.tokens, 1))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {v:.1f}" for n, v in speeds.items()), flush=True)
    base = speeds["llama"]
    print(f"\n| family | forward | tok/s | vs Llama |  ({dtype}, quantization {args.quantization})")
    print("|---|---|---:|---:|")
    for name, speed in speeds.items():
        print(f"| {name} | {paths[name]} | {speed:.1f} | {speed / base:.2f}x |")


if __name__ == "__main__":
    main()

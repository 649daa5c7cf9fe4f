"""One-stream decode speed of every lean family against the Llama-shaped model of the same sizes.

    python -m scripts.bench_families [--tokens 64] [--dtype float32] [--quantization none] [--families a,b]

Builds a small random-weight model of each family (tests.families, at `SIZES`: 8 layers, hidden
512, 8 heads over 2 kv heads, head_dim 64, MLP 1536) and the plain Llama of the same sizes, serves
each from an in-process `Engine` (all loaded at once, idle but for the one measured) and streams
`--tokens` greedy tokens after a 16-token prompt, one request at a time, the families taking turns
for `--runs` rounds (a busy machine slows all alike). Prints a Markdown table: tok/s (after the
first token, best of the rounds), and each family's ratio to the Llama of the same invocation.
Needs the SmolLM2 tokenizer (tests.random_llama.find_tokenizer_dir).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack
from typing import Any

import torch

from engine.core.request import SamplingParams
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--families", default=",".join(CONFIGS))
    args = parser.parse_args()
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

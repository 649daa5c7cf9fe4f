"""What a constrained request costs the others in its batch: the engine alone, no HTTP.

Runs `--others` unconstrained greedy requests (128 tokens each, ignore_eos) beside `--extra`
more requests, once with the extra ones unconstrained and once with a JSON-schema grammar on
them, and prints the unconstrained requests' tok/s in both cases and the slowdown. The extra
rows are in the batch both times, so the difference is the masks' cost alone. Alternates the
two cases `--rounds` times and reports medians. Usage: .venv/bin/python scripts/bench_grammar.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import Engine, GrammarSpec, SamplingParams, load_catalog  # noqa: E402
from engine.model.loader import load_model  # noqa: E402

# JSON that cannot be complete within 128 tokens, so the constrained rows stay in the batch to the end.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 500},
    },
    "required": ["name", "tags"],
}


async def one_round(engine: Engine, prompt: list[int], others: int, extra: int, constrained: bool) -> float:
    plain = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True)
    grammar = GrammarSpec.json_schema(SCHEMA) if constrained else None
    side = SamplingParams(temperature=1.0, max_tokens=128, ignore_eos=True, grammar=grammar, seed=1)

    async def run(params: SamplingParams, rid: str) -> tuple[int, float]:
        start, tokens = time.perf_counter(), 0
        async for delta in engine.generate(prompt, params, rid):
            tokens += len(delta.token_ids)
        return tokens, time.perf_counter() - start

    tag = "g" if constrained else "p"
    jobs = [run(plain, f"{tag}-o{i}-{time.monotonic_ns()}") for i in range(others)]
    jobs += [run(side, f"{tag}-x{i}-{time.monotonic_ns()}") for i in range(extra)]
    results = await asyncio.gather(*jobs)
    measured = results[:others]
    return sum(t for t, _ in measured) / max(s for _, s in measured)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--others", type=int, default=8)
    p.add_argument("--extra", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    catalog = load_catalog(ROOT / "models.yaml").with_dtype(args.dtype)
    cfg = catalog.default_model
    engine = Engine(load_model(cfg, catalog.cache_dir), cfg)
    engine.start()
    try:
        prompt = list(
            engine.tokenizer.apply_chat_template(
                [{"role": "user", "content": "Describe a person as JSON."}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        asyncio.run(one_round(engine, prompt, 2, 0, False))  # warm-up
        plain, masked = [], []
        for _ in range(args.rounds):
            plain.append(asyncio.run(one_round(engine, prompt, args.others, args.extra, False)))
            masked.append(asyncio.run(one_round(engine, prompt, args.others, args.extra, True)))
    finally:
        engine.shutdown()
    a, b = statistics.median(plain), statistics.median(masked)
    print(
        f"{args.others} unconstrained requests beside {args.extra} more ({args.dtype}), "
        f"medians of {args.rounds}:"
    )
    print(f"  extra requests unconstrained: {a:.1f} tok/s   (runs: {', '.join(f'{x:.1f}' for x in plain)})")
    print(f"  extra requests with a grammar: {b:.1f} tok/s   (runs: {', '.join(f'{x:.1f}' for x in masked)})")
    print(f"  slowdown of the others: {100 * (1 - b / a):+.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

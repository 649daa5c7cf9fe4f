"""Where a catalog model's resident memory goes, stage by stage, in one process (Linux, /proc).

    python scripts/load_rss.py --model smollm2 [--tokens 32]

Prints the process's RSS (anonymous and file-backed) after: the imports (torch, transformers,
the engine and server with their dependencies), `load_model` (weights and tokenizer), the
`Engine` (its KV cache: mapped at load, its pages resident only once written, so memory grows
with the blocks sequences have used, up to the budget), the engine's start (the lean forward), and
one greedy request at 1, 2 and 4 streams (each new decode bucket records a CPU trace). The line
after `load_model` is what "load RSS" means in the README: the model loaded, before the engine
and its KV cache.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def memory() -> str:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return (
        f"RSS {fields['VmRSS']:5d} MiB (anon {fields['RssAnon']:5d}, file {fields['RssFile']:4d}), "
        f"peak {fields['VmHWM']:5d}"
    )


def show(stage: str) -> None:
    print(f"{stage:34s} {memory()}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="catalog id or alias (default: the catalog's default)")
    p.add_argument("--config", type=Path, default=ROOT / "models.yaml")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens per request")
    args = p.parse_args()
    show("python")
    import torch  # noqa: F401

    show("import torch")
    import transformers  # noqa: F401

    show("import transformers")
    sys.path.insert(0, str(ROOT))
    from engine import Engine, SamplingParams, load_catalog
    from engine.model.loader import load_model

    show("import engine (torchao, tokenizers)")
    import server.app  # noqa: F401

    show("import server")
    catalog = load_catalog(args.config)
    cfg = catalog.resolve(args.model) if args.model else catalog.default_model
    if cfg is None:
        p.error(f"model {args.model!r} is not in the catalog")
    start = time.perf_counter()
    loaded = load_model(cfg, catalog.cache_dir)
    show(f"load_model ({time.perf_counter() - start:.1f} s)")
    engine = Engine(loaded, cfg)
    show("Engine (KV cache allocated)")
    engine.start()
    while engine.runner.lean_wanted and engine.runner.lean is None:
        time.sleep(0.05)
    show("engine started (lean forward)")
    ids = loaded.tokenizer("The capital of France is")["input_ids"]
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)

    async def streams(n: int) -> None:
        async def one(i: int) -> None:
            async for _ in engine.generate(ids, params, f"rss-{n}-{i}"):
                pass

        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        for n in (1, 2, 4):
            asyncio.run(streams(n))
            show(f"after a request at {n} stream(s)")
    finally:
        engine.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

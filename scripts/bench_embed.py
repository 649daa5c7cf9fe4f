"""`scripts/bench --embeddings`: throughput of POST /v1/embeddings beside sentence-transformers in-process.

For each request size B (sentences per request, default 1 and 16) and concurrency C (default 1, 8,
32), C workers each send one request of B sentences after another until the level's budget of
requests is spent; the table gives sentences/s and the request latency (p50, p99). The same
sentences are then encoded by sentence-transformers in this process on the same model folder, once
B sentences per `encode` call (a program embedding as it goes) and once all of them in one call
(`batch_size` 32, its default: the offline ceiling). Hearth and sentence-transformers never run
together. Without --url the bench starts Hearth with the repository's catalog (the embedding model
loads on the warm-up request) and stops it afterwards. llama.cpp's `llama-server --embeddings` is
not run here: it needs a GGUF conversion of the model and a llama.cpp build this repository does not
ship (see the README's embeddings section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from bench_client import percentile
from bench_servers import ROOT, free_port, hearth_cmd, server
from procinfo import cpu_info, cpu_line

DEFAULT_MODEL = "all-minilm-l6-v2"
SUBJECTS = ["The river", "A small dog", "Our neighbour", "The committee", "An old lighthouse", "The recipe"]
VERBS = ["crossed", "described", "ignored", "celebrated", "measured", "rebuilt"]
OBJECTS = [
    "the bridge",
    "a long and winding mountain road that nobody had used for years",
    "the results of the experiment in great and careful detail",
    "the old town",
    "every one of the forty-two proposals submitted before the deadline last spring",
    "a cup of tea",
]


def sentences(n: int) -> list[str]:
    """`n` different sentences of 5 to 25 words (deterministic)."""
    out = []
    for i in range(n):
        s, v, o = SUBJECTS[i % 6], VERBS[(i // 6) % 6], OBJECTS[(i // 36 + i) % 6]
        out.append(f"{s} {v} {o} (#{i}).")
    return out


@dataclass(frozen=True)
class Row:
    """One measured level: who, how many sentences per request/call, at what concurrency."""

    system: str
    batch: int
    concurrency: int
    requests: int
    failed: int
    sentences_s: float
    latency_p50: float
    latency_p99: float
    wall: float


async def level(url: str, model: str, batch: int, concurrency: int, requests: int) -> Row:
    """`requests` requests of `batch` sentences from `concurrency` workers."""
    texts = sentences(max(64, batch * 4))
    latencies: list[float] = []
    failed = 0
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failed
        for i in counter:
            start = i * batch % len(texts)
            body = {"model": model, "input": (texts * 2)[start : start + batch], "encoding_format": "base64"}
            t0 = time.perf_counter()
            response = await client.post(f"{url}/v1/embeddings", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return _row("hearth", batch, concurrency, requests, failed, latencies, wall)


def _row(system: str, batch: int, c: int, n: int, failed: int, latencies: list[float], wall: float) -> Row:
    ok = len(latencies)
    return Row(
        system,
        batch,
        c,
        n,
        failed,
        round(ok * batch / wall, 1) if wall > 0 else 0.0,
        round(percentile(latencies, 50), 4) if latencies else 0.0,
        round(percentile(latencies, 99), 4) if latencies else 0.0,
        round(wall, 3),
    )


def st_rows(model_dir: Path, batches: Sequence[int], total: int) -> list[Row]:
    """sentence-transformers on `model_dir`: `total` sentences, B per `encode` call, and all in one."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.encode(sentences(8))  # warm-up
    rows = []
    for batch in batches:
        texts = sentences(max(64, batch * 4))
        calls = max(1, total // batch)
        latencies = []
        t0 = time.perf_counter()
        for i in range(calls):
            start = i * batch % len(texts)
            c0 = time.perf_counter()
            model.encode((texts * 2)[start : start + batch], batch_size=max(batch, 1))
            latencies.append(time.perf_counter() - c0)
        rows.append(_row("sentence-transformers", batch, 1, calls, 0, latencies, time.perf_counter() - t0))
    texts = sentences(total)
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32)
    wall = time.perf_counter() - t0
    rows.append(_row("sentence-transformers (all at once)", total, 1, 1, 0, [wall], wall))
    return rows


def model_folder(config: Path, model: str) -> Path:
    from engine.catalog.models_file import load_catalog, resolve_source

    cfg = load_catalog(config).resolve(model)
    if cfg is None:
        raise SystemExit(f"bench: model {model!r} is not in {config}")
    return resolve_source(cfg)


def table(rows: Sequence[Row]) -> str:
    columns = [
        "system",
        "sentences/request",
        "conc",
        "requests",
        "failed",
        "sentences/s",
        "p50 (s)",
        "p99 (s)",
    ]
    lines = ["| " + " | ".join([*columns, "wall (s)"]) + " |", "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.batch} | {r.concurrency} | {r.requests} | {r.failed} | {r.sentences_s} | "
            f"{r.latency_p50} | {r.latency_p99} | {r.wall} |"
        )
    return "\n".join(lines)


async def hearth_rows(url: str, args: argparse.Namespace) -> list[Row]:
    async with httpx.AsyncClient(timeout=600) as client:  # warm-up: loads the model
        warm = await client.post(f"{url}/v1/embeddings", json={"model": args.model, "input": sentences(4)})
        warm.raise_for_status()
    rows = []
    for batch in args.batch:
        for c in args.concurrency:
            n = args.requests or max(4, 4 * c)
            row = await level(url, args.model, batch, c, n)
            speed = f"{row.sentences_s} sentences/s, p50 {row.latency_p50} s"
            print(f"[hearth] {batch} sentences x c{c}: {speed}", flush=True)
            rows.append(row)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench --embeddings", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="Hearth to measure; default: start one on a free port")
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedding model id (default: %(default)s)")
    p.add_argument("--config", type=Path, default=ROOT / "models.yaml", help="catalog (default: the repo's)")
    p.add_argument("--concurrency", default=None, help="comma-separated (default: 1,8,32; --quick: 1,2)")
    p.add_argument("--batch", default=None, help="sentences per request, comma-separated (default: 1,16)")
    p.add_argument("--requests", type=int, help="requests per level (default: 4 x concurrency, at least 4)")
    p.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    p.add_argument("--quick", action="store_true", help="smoke test: c1,c2, 1 and 4 sentences, 2 requests")
    p.add_argument("--hearth-python", type=Path, help="interpreter for Hearth (default: .venv's)")
    p.add_argument("--json", help="write the rows and the CPU to this file")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,2" if args.quick else "1,8,32")).split(",")]
    args.batch = [int(b) for b in (args.batch or ("1,4" if args.quick else "1,16")).split(",")]
    if args.quick and args.requests is None:
        args.requests = 2
    if min(args.concurrency + args.batch) < 1:
        p.error("--concurrency and --batch take integers >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = cpu_info()
    if args.url:
        rows = asyncio.run(hearth_rows(args.url.rstrip("/"), args))
    else:
        port = free_port()
        with server("hearth", hearth_cmd(port, args.hearth_python, args.config, None), port) as url:
            rows = asyncio.run(hearth_rows(url, args))
    if not args.no_st:
        most = max(r.requests * r.batch for r in rows)
        rows += st_rows(model_folder(args.config, args.model), args.batch, total=max(most, 16))
    print()
    print(table(rows))
    print(f"\n{cpu_line(info)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": info, "rows": [asdict(r) for r in rows]}, indent=2))
    failed = sum(r.failed for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""`scripts/bench --embeddings`: throughput of POST /v1/embeddings beside sentence-transformers in-process
and, with `--llama-server PATH`, llama.cpp's `llama-server --embeddings`.

For each request size B (sentences per request, default 1 and 16) and concurrency C (default 1, 8,
32), C workers each send one request of B sentences after another until the level's budget of
requests is spent; the table gives sentences/s and the request latency (p50, p99). The same
sentences are then encoded by sentence-transformers in this process on the same model folder, once
B sentences per `encode` call (a program embedding as it goes) and once all of them in one call
(`batch_size` 32, its default: the offline ceiling). Without --url the bench starts Hearth with the
repository's catalog (the embedding model loads on the warm-up request) and stops it afterwards.

With `--llama-server PATH` (a llama.cpp build of your own) and `--peer-gguf FILE` (the model converted
by llama.cpp's `convert_hf_to_gguf.py`, see the README's embeddings section), llama-server runs the same
levels on that file: `--embeddings`, the pooling and normalization Hearth reads from the model's
sentence-transformers files, `-np` = the highest concurrency, `--peer-slot-ctx` tokens per slot, `-b`/`-ub`
`--peer-batch` (a BERT-like model's inputs must each fit one ubatch). A last table puts Hearth's
sentences/s over llama-server's per level. Hearth, llama-server and sentence-transformers never run
together.
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
from typing import TYPE_CHECKING

import httpx
from bench_client import connection_limits, percentile
from bench_servers import ROOT, first_model_id, free_port, gguf_of, hearth_cmd, llama_cmd, server
from procinfo import cpu_info, cpu_line

if TYPE_CHECKING:
    from engine.catalog.config import ModelConfig

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


async def level(system: str, url: str, model: str, batch: int, concurrency: int, requests: int) -> Row:
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

    limits = connection_limits(concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return _row(system, batch, concurrency, requests, failed, latencies, wall)


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


def model_folder(config: Path, model: str) -> tuple[Path, ModelConfig]:
    """The catalog entry of `model` and its folder."""
    from engine.catalog.models_file import load_catalog, resolve_source

    cfg = load_catalog(config).resolve(model)
    if cfg is None:
        raise SystemExit(f"bench: model {model!r} is not in {config}")
    return resolve_source(cfg), cfg


def llama_embed_cmd(args: argparse.Namespace, gguf: Path, port: int) -> list[str]:
    """bench_servers' `llama-server` command with its embeddings flags: the pooling and normalization
    Hearth serves the catalog model with, one slot per concurrent request, `--peer-slot-ctx` tokens each."""
    from engine.embed.pooling import read_pooling

    pooling = read_pooling(*model_folder(args.config, args.model))
    slots = max(args.concurrency)
    peer = argparse.Namespace(
        **{**vars(args), "peer_parallel": slots, "peer_ctx": slots * args.peer_slot_ctx}
    )
    return [
        *llama_cmd(peer, gguf, port), "--embeddings", "--pooling", pooling.mode,
        "--embd-normalize", "2" if pooling.normalize else "-1",
        "-b", str(args.peer_batch), "-ub", str(args.peer_batch),
    ]  # fmt: skip


def ratios(rows: Sequence[Row]) -> list[dict[str, float | int]]:
    """Per level measured on both servers: Hearth's sentences/s over llama-server's."""
    peer = {(r.batch, r.concurrency): r.sentences_s for r in rows if r.system == "llama-server"}
    out: list[dict[str, float | int]] = []
    for r in rows:
        theirs = peer.get((r.batch, r.concurrency))
        if r.system == "hearth" and theirs:
            ratio = round(r.sentences_s / theirs, 2)
            where = {"batch": r.batch, "concurrency": r.concurrency, "hearth": r.sentences_s}
            out.append({**where, "llama_server": theirs, "ratio": ratio})
    return out


def ratio_table(data: Sequence[dict[str, float | int]]) -> str:
    lines = [
        "| sentences/request | conc | hearth (sentences/s) | llama-server (sentences/s) | hearth ÷ llama |",
        "|---|---|---|---|---|",
    ]
    for d in data:
        lines.append(
            f"| {d['batch']} | {d['concurrency']} | {d['hearth']} | {d['llama_server']} | {d['ratio']}× |"
        )
    return "\n".join(lines)


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


async def server_rows(system: str, url: str, model: str, args: argparse.Namespace) -> list[Row]:
    """Every level against one running server, after a warm-up request (Hearth loads the model on it)."""
    async with httpx.AsyncClient(timeout=600) as client:
        warm = await client.post(f"{url}/v1/embeddings", json={"model": model, "input": sentences(4)})
        warm.raise_for_status()
    rows = []
    for batch in args.batch:
        for c in args.concurrency:
            n = args.requests or max(4, 4 * c)
            row = await level(system, url, model, batch, c, n)
            speed = f"{row.sentences_s} sentences/s, p50 {row.latency_p50} s"
            print(f"[{system}] {batch} sentences x c{c}: {speed}", flush=True)
            rows.append(row)
    return rows


def llama_rows(args: argparse.Namespace) -> list[Row]:
    """llama-server started on the GGUF, measured at the same levels, stopped."""
    gguf = (args.peer_gguf or gguf_of(args.config, [args.model])).resolve()
    port = free_port()
    with server("llama-server", llama_embed_cmd(args, gguf, port), port) as url:
        return asyncio.run(server_rows("llama-server", url, first_model_id(url), args))


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
    p.add_argument("--llama-server", type=Path, help="also measure llama.cpp's llama-server (its binary)")
    p.add_argument("--peer-gguf", type=Path, help="llama-server's GGUF of the model (convert_hf_to_gguf.py)")
    p.add_argument("--peer-threads", type=int, default=2, help="llama-server -t (default: %(default)s)")
    p.add_argument(
        "--peer-slot-ctx", type=int, default=256, help="llama-server tokens per slot (default: %(default)s)"
    )
    p.add_argument(
        "--peer-batch", type=int, default=2048, help="llama-server -b and -ub (default: %(default)s)"
    )
    p.add_argument("--json", help="write the rows and the CPU to this file")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,2" if args.quick else "1,8,32")).split(",")]
    args.batch = [int(b) for b in (args.batch or ("1,4" if args.quick else "1,16")).split(",")]
    if args.quick and args.requests is None:
        args.requests = 2
    if min(args.concurrency + args.batch) < 1:
        p.error("--concurrency and --batch take integers >= 1")
    if args.peer_gguf and not args.llama_server:
        p.error("--peer-gguf is llama-server's model: give --llama-server PATH too")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = cpu_info()
    if args.url:
        rows = asyncio.run(server_rows("hearth", args.url.rstrip("/"), args.model, args))
    else:
        port = free_port()
        with server("hearth", hearth_cmd(port, args.hearth_python, args.config, None), port) as url:
            rows = asyncio.run(server_rows("hearth", url, args.model, args))
    if args.llama_server:
        rows += llama_rows(args)
    if not args.no_st:
        most = max(r.requests * r.batch for r in rows)
        rows += st_rows(model_folder(args.config, args.model)[0], args.batch, total=max(most, 16))
    print()
    print(table(rows))
    versus = ratios(rows)
    if versus:
        print(f"\n{ratio_table(versus)}")
    print(f"\n{cpu_line(info)}")
    if args.json:
        data = {"cpu": info, "rows": [asdict(r) for r in rows], "hearth_over_llama_server": versus}
        Path(args.json).write_text(json.dumps(data, indent=2))
    failed = sum(r.failed for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

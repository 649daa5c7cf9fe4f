"""Closed-loop load generator for OpenAI-compatible servers: Hearth, and optionally a peer to compare with.

For each concurrency level C, C workers each stream one `/v1/chat/completions` request after another
(temperature 0, prompts that ask for long answers) until the level's request budget (or --duration)
is spent. Per request: TTFT (first non-empty content chunk), end-to-end latency, completion tokens
(the usage the server reports, else the number of content chunks). Per level: output tok/s (all
completion tokens / wall time of the level), TTFT p50/p99, latency p50, requests ok/failed.

Without --url the bench starts Hearth itself on a free port and stops it afterwards (with --hearth-config,
on that catalog). --compare also benchmarks `transformers serve --continuous-batching` on the same
weights, one server at a time: from `.venv-peer` (created on first use), or with --peer-python from an
interpreter that already has `transformers[serving]` (a machine without internet).

Quirks of `transformers serve` 5.24 (checked by hand on the converted SmolLM2-135M folder, offline):
- The model folder given as FORCE_MODEL pins the server: requests must name exactly that path
  string as `model` (it is also the id /v1/models lists); any other name gets 400.
- Unknown request fields get 422 ("Unexpected fields in the request: {'ignore_eos'}"), so the
  warm-up probes for `ignore_eos` support and drops it when refused; `stream_options` is ignored
  with a log line, but the last chunk (the finish_reason one) carries `usage` anyway.
- The stream ends without `data: [DONE]`.
- The first request after start is slow (~10 s of continuous-batching set-up): the warm-up takes it.
- It reserves a large paged KV cache on CPU (~4 GiB RSS for a 135M model).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_servers import default_model_dir, first_model_id, free_port, hearth_cmd, peer_cmd, server

TOPICS = [
    "the history of the Roman Empire",
    "how rivers shape landscapes over millions of years",
    "the invention of the printing press and its consequences",
    "the life cycle of stars",
    "the development of modern medicine",
    "the history of mathematics from Babylon to today",
    "how the internet works, layer by layer",
    "the causes and effects of the industrial revolution",
    "the ecology of tropical rainforests",
    "the history of music in Europe",
    "how airplanes fly",
    "the exploration of the oceans",
    "the history of chess",
    "the evolution of human language",
    "the architecture of medieval cathedrals",
    "the science of weather and climate",
]
PROMPTS = [f"Write a long, detailed essay about {t}. Use many paragraphs." for t in TOPICS]


@dataclass
class RequestResult:
    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    wall: float
    results: list[RequestResult] = field(default_factory=list)

    @property
    def good(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> int:
        return len(self.results) - len(self.good)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.good)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall > 0 else 0.0

    def row(self) -> dict[str, float | int]:
        good = self.good
        ttfts = [r.ttft for r in good if r.ttft is not None]
        return {
            "concurrency": self.concurrency,
            "ok": len(good),
            "failed": self.failed,
            "tok_s": round(self.tok_s, 2),
            "tok_per_req": round(self.tokens / len(good), 1) if good else 0.0,
            "ttft_p50": round(percentile(ttfts, 50), 3),
            "ttft_p99": round(percentile(ttfts, 99), 3),
            "latency_p50": round(percentile([r.latency for r in good], 50), 3),
            "wall": round(self.wall, 2),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---------------------------------------------------------------- client


@dataclass(frozen=True)
class Target:
    """One server under test: where it is, the model name to send and the extra request fields."""

    name: str
    url: str
    model: str
    extra: dict[str, Any]


def payload(target: Target, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **target.extra,
    }


async def one_request(
    client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int
) -> RequestResult:
    """Stream one chat completion; parse the SSE `data:` lines as they arrive."""
    start = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    try:
        body = payload(target, prompt, max_tokens)
        async with client.stream("POST", f"{target.url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return RequestResult(
                    False, time.perf_counter() - start, error=f"{resp.status_code}: {text[:300]}"
                )
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return RequestResult(False, time.perf_counter() - start, error=str(event["error"])[:300])
                if event.get("usage"):
                    usage_tokens = int(event["usage"].get("completion_tokens", 0))
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return RequestResult(False, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    tokens = usage_tokens if usage_tokens is not None else chunks
    return RequestResult(True, time.perf_counter() - start, ttft=ttft, tokens=tokens)


async def run_level(
    target: Target, concurrency: int, requests: int | None, duration: float | None, max_tokens: int
) -> LevelResult:
    """C workers in a closed loop until `requests` have been started or `duration` seconds have passed."""
    results: list[RequestResult] = []
    started = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
    start = time.perf_counter()
    deadline = start + duration if duration is not None else None

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started
        while (requests is None or started < requests) and (
            deadline is None or time.perf_counter() < deadline
        ):
            prompt = PROMPTS[started % len(PROMPTS)]
            started += 1
            results.append(await one_request(client, target, prompt, max_tokens))

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return LevelResult(concurrency, time.perf_counter() - start, results)


async def warm_up(target: Target) -> Target:
    """One short request; drops `ignore_eos` if the server refuses it. Raises when the server fails."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        result = await one_request(client, target, PROMPTS[0], 8)
        if not result.ok and target.extra and (result.error or "")[:3] in ("400", "422"):
            print(
                f"[{target.name}] refused {sorted(target.extra)} ({result.error}); sending without",
                flush=True,
            )
            target = Target(target.name, target.url, target.model, {})
            result = await one_request(client, target, PROMPTS[0], 8)
    if not result.ok:
        raise RuntimeError(f"[{target.name}] warm-up request failed: {result.error}")
    return target


def bench(target: Target, args: argparse.Namespace) -> list[LevelResult]:
    target = asyncio.run(warm_up(target))
    print(f"[{target.name}] model {target.model!r} at {target.url}, extra fields {target.extra}", flush=True)
    levels = []
    for c in args.concurrency:
        requests = args.requests_per_level
        if requests is None and args.duration is None:
            requests = max(2 * c, 4)
        level = asyncio.run(run_level(target, c, requests, args.duration, args.max_tokens))
        row = level.row()
        print(
            f"[{target.name}] c={c}: {row['tok_s']} tok/s, ttft p50 {row['ttft_p50']} s, "
            f"{row['ok']} ok / {row['failed']} failed",
            flush=True,
        )
        for r in level.results:
            if not r.ok:
                print(f"[{target.name}]   failed: {r.error}", flush=True)
                break
        levels.append(level)
    return levels


# ---------------------------------------------------------------- output

COLUMNS = [
    ("concurrency", "conc"),
    ("ok", "ok"),
    ("failed", "failed"),
    ("tok_s", "output tok/s"),
    ("tok_per_req", "tok/req"),
    ("ttft_p50", "TTFT p50 (s)"),
    ("ttft_p99", "TTFT p99 (s)"),
    ("latency_p50", "latency p50 (s)"),
    ("wall", "wall (s)"),
]


def table(title: str, levels: list[LevelResult]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(h for _, h in COLUMNS) + " |"]
    lines.append("|" + "---:|" * len(COLUMNS))
    for level in levels:
        row = level.row()
        lines.append("| " + " | ".join(str(row[k]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def ratio_table(ours: list[LevelResult], peer: list[LevelResult]) -> str:
    lines = [
        "### Hearth / peer",
        "",
        "| conc | tok/s ratio (>1: Hearth faster) | TTFT p50 ratio (<1: Hearth faster) |",
        "|---:|---:|---:|",
    ]
    for a, b in zip(ours, peer, strict=True):
        ra, rb = a.row(), b.row()
        tok = ra["tok_s"] / rb["tok_s"] if rb["tok_s"] else float("nan")
        ttft = ra["ttft_p50"] / rb["ttft_p50"] if rb["ttft_p50"] else float("nan")
        lines.append(f"| {a.concurrency} | {tok:.2f} | {ttft:.2f} |")
    return "\n".join(lines)


def write_outputs(runs: dict[str, list[LevelResult]], args: argparse.Namespace) -> None:
    rows = [{"server": name, **level.row()} for name, levels in runs.items() for level in levels]
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"max_tokens": args.max_tokens, "levels": rows}, indent=2) + "\n"
        )


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to benchmark; default: start Hearth on a free port")
    p.add_argument("--model", help="model name to request (default: the first id /v1/models lists)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=128, help="per request (default: %(default)s)")
    p.add_argument("--requests-per-level", type=int, help="default: 2 x concurrency, at least 4")
    p.add_argument("--duration", type=float, help="seconds per level: stop starting requests after it")
    p.add_argument(
        "--compare", action="store_true", help="also benchmark `transformers serve --continuous-batching`"
    )
    p.add_argument(
        "--model-dir", type=Path, help="weights folder for the peer (default: Hearth's converted cache)"
    )
    p.add_argument("--hearth-config", type=Path, help="models.yaml for the Hearth it starts (--config)")
    p.add_argument(
        "--hearth-python", type=Path, help="interpreter for Hearth (default: .venv's, else this one)"
    )
    p.add_argument(
        "--peer-python",
        type=Path,
        help="run the peer with this interpreter (it must have transformers[serving]) instead of .venv-peer",
    )
    p.add_argument(
        "--peer-device", default="cpu", help="`transformers serve --device` (default: %(default)s)"
    )
    p.add_argument(
        "--peer-dtype", default="float32", help="`transformers serve --dtype` (default: %(default)s)"
    )
    p.add_argument("--csv", help="write the per-level rows to this CSV file")
    p.add_argument("--json", help="write the per-level rows to this JSON file")
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency takes comma-separated integers, e.g. 1,8,32")
    if not args.concurrency or min(args.concurrency) < 1 or args.max_tokens < 1:
        p.error("--concurrency levels and --max-tokens must be >= 1")
    return args


def run_hearth(args: argparse.Namespace) -> list[LevelResult]:
    extra = {"ignore_eos": True}
    if args.url:
        url = args.url.rstrip("/")
        return bench(Target("hearth", url, args.model or first_model_id(url), extra), args)
    port = free_port()
    with server("hearth", hearth_cmd(port, args), port) as url:
        return bench(Target("hearth", url, args.model or first_model_id(url), extra), args)


def run_peer(args: argparse.Namespace) -> list[LevelResult]:
    model_dir = (args.model_dir or default_model_dir()).resolve()
    port = free_port()
    with server("peer", peer_cmd(args, model_dir, port), port, env={"HF_HUB_OFFLINE": "1"}) as url:
        # The peer is pinned to the folder and wants exactly that string as the model name.
        return bench(Target("peer", url, first_model_id(url), {"ignore_eos": True}), args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)  # so `finally` stops the servers on TERM too
    runs: dict[str, list[LevelResult]] = {}
    try:
        runs["hearth"] = run_hearth(args)
        if args.compare:
            runs["peer"] = run_peer(args)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, httpx.HTTPError, subprocess.CalledProcessError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    print(f"\nmax_tokens={args.max_tokens}, prompts ask for long essays, temperature 0\n")
    print(table("Hearth", runs["hearth"]))
    if "peer" in runs:
        print()
        print(table("transformers serve --continuous-batching", runs["peer"]))
        print()
        print(ratio_table(runs["hearth"], runs["peer"]))
    write_outputs(runs, args)
    failed = sum(level.failed for levels in runs.values() for level in levels)
    return 1 if failed else 0


def _raise_exit(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

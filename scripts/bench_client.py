"""The closed-loop streaming load of `scripts/bench.py` and `scripts/scale.py`, and its per-level figures.

C workers each stream one request after another (chat completions or legacy completions, temperature 0)
until the level's request budget or duration is spent. Per request: TTFT (first non-empty content chunk),
end-to-end latency, completion and prompt tokens (the usage the server reports; else the number of
content chunks). Per level: output tok/s (all completion tokens / wall time), TTFT p50/p99, latency p50,
requests ok/failed, and, when the server's pid is known, its RSS sampled every second.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from procinfo import RssSample, RssSampler

Body = Callable[[int], dict[str, Any]]  # the i-th request's fields (without model, stream, extras)


@dataclass
class RequestResult:
    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # of the prompt, reused from an earlier request's KV
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    wall: float
    results: list[RequestResult] = field(default_factory=list)
    rss: list[RssSample] = field(default_factory=list)

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

    def row(self) -> dict[str, float | int | None]:
        """The level's figures; None where nothing was measured (no TTFT, no RSS)."""
        good = self.good
        ttfts = [r.ttft for r in good if r.ttft is not None]
        rss = [s.rss_mib for s in self.rss]
        return {
            "concurrency": self.concurrency,
            "ok": len(good),
            "failed": self.failed,
            "tok_s": round(self.tok_s, 2),
            "tok_per_req": round(self.tokens / len(good), 1) if good else 0.0,
            "ttft_p50": _round(percentile(ttfts, 50), 3),
            "ttft_p99": _round(percentile(ttfts, 99), 3),
            "latency_p50": _round(percentile([r.latency for r in good], 50), 3),
            "wall": round(self.wall, 2),
            "rss_start": round(rss[0], 1) if rss else None,
            "rss_peak": round(max(rss), 1) if rss else None,
            "rss_end": round(rss[-1], 1) if rss else None,
        }

    def raw(self) -> dict[str, Any]:
        """Everything measured: the row, each request, each RSS sample (t, MiB, requests done)."""
        return {
            **self.row(),
            "requests": [vars(r) for r in self.results],
            "rss_samples": [[round(s.t, 2), round(s.rss_mib, 1), s.done] for s in self.rss],
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


def _round(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


@dataclass(frozen=True)
class Target:
    """One server under test: where it is, the route, the model name to send and extra request fields."""

    name: str
    url: str
    model: str
    extra: dict[str, Any]
    path: str = "/v1/chat/completions"
    pid: int | None = None  # the server process, for RSS; None: not sampled

    def without_extra(self) -> Target:
        return Target(self.name, self.url, self.model, {}, self.path, self.pid)


def full_body(target: Target, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": target.model,
        "temperature": 0,
        **fields,
        "stream": True,
        "stream_options": {"include_usage": True},
        **target.extra,
    }


def connection_limits(concurrency: int) -> httpx.Limits:
    """Connections for `concurrency` workers, each request on a connection of its own, for every server.

    llama-server (its HTTP library, cpp-httplib) closes a connection right after each streamed
    response although the response's headers promise keep-alive (`Keep-Alive: timeout=5, max=100`):
    its stream handler returns false after the final chunk, which the library takes as a cancelled
    write. A client that reuses the connection races that close, and when its next request is sent
    first it fails with `httpx.RemoteProtocolError: Server disconnected without sending a response`.
    A fresh connection costs well under a millisecond on loopback, the same for every server."""
    return httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)


async def one_request(client: httpx.AsyncClient, target: Target, fields: dict[str, Any]) -> RequestResult:
    """Stream one request; parse the SSE `data:` lines as they arrive (chat deltas or completion text)."""
    start = time.perf_counter()
    ttft: float | None = None
    chunks = 0
    usage: dict[str, Any] | None = None
    try:
        body = full_body(target, fields)
        async with client.stream("POST", f"{target.url}{target.path}", json=body) as resp:
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
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") or choice.get("text"):
                        chunks += 1
                        if ttft is None:
                            ttft = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        return RequestResult(False, time.perf_counter() - start, error=f"{type(e).__name__}: {e}")
    latency = time.perf_counter() - start
    if not usage:
        return RequestResult(True, latency, ttft=ttft, tokens=chunks)
    prompt = usage.get("prompt_tokens")
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    return RequestResult(True, latency, ttft, int(usage.get("completion_tokens", 0)), prompt, cached)


async def _load(
    target: Target, concurrency: int, requests: int | None, duration: float | None, body: Body,
    results: list[RequestResult],
) -> float:  # fmt: skip
    """C workers in a closed loop until `requests` have been started or `duration` seconds have passed;
    returns the wall time."""
    started = 0
    limits = connection_limits(concurrency)
    timeout = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
    start = time.perf_counter()
    deadline = start + duration if duration is not None else None

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started
        while (requests is None or started < requests) and (
            deadline is None or time.perf_counter() < deadline
        ):
            fields = body(started)
            started += 1
            results.append(await one_request(client, target, fields))

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return time.perf_counter() - start


def run_level(
    target: Target, concurrency: int, requests: int | None, duration: float | None, body: Body,
    rss_interval: float = 1.0,
) -> LevelResult:  # fmt: skip
    """One closed-loop level; samples the server's RSS meanwhile when `target.pid` is known."""
    results: list[RequestResult] = []
    if target.pid is None:
        wall = asyncio.run(_load(target, concurrency, requests, duration, body, results))
        return LevelResult(concurrency, wall, results)
    with RssSampler(target.pid, rss_interval, progress=lambda: len(results)) as sampler:
        wall = asyncio.run(_load(target, concurrency, requests, duration, body, results))
    return LevelResult(concurrency, wall, results, sampler.samples)


async def _warm_up(target: Target, fields: dict[str, Any]) -> Target:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        result = await one_request(client, target, fields)
        if not result.ok and target.extra and (result.error or "")[:3] in ("400", "422"):
            print(
                f"[{target.name}] refused {sorted(target.extra)} ({result.error}); sending without",
                flush=True,
            )
            target = target.without_extra()
            result = await one_request(client, target, fields)
    if not result.ok:
        raise RuntimeError(f"[{target.name}] warm-up request failed: {result.error}")
    return target


def warm_up(target: Target, fields: dict[str, Any]) -> Target:
    """One short request; drops the extra fields if the server refuses them. Raises when the server fails."""
    return asyncio.run(_warm_up(target, fields))


def requests_for(concurrency: int, requests: int | None, duration: float | None) -> int | None:
    """The level's request budget: as given, none with a duration, else 2 x concurrency (at least 4)."""
    if requests is None and duration is None:
        return max(2 * concurrency, 4)
    return requests

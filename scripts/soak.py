"""Soak test: a bounded closed-loop load against Hearth, then checks that nothing leaked.

C clients send requests one after another for --duration seconds: chat (streamed or not), legacy
completions and Anthropic messages with a few dozen tokens each; about 20 % of them stream and hang up
after a few chunks, about 5 % are bad requests that must get a 4xx in the documented shape
(`scripts/soak_requests.py`). Before the load it records greedy answers to three fixed prompts, pays
the server's one-time costs (`scripts/soak_warmup.py`: worker pools, and every concurrency 1..C at a
short and a long context, so each decode trace is recorded) and counts its threads; during it, the
server's RSS at the end of the warm-up (the first 10 % of the duration) and at each tenth; after it,
the RSS right after the load and after idle, so a jump is placed in time. Afterwards it checks:

- every good request succeeded and every bad one got its 4xx;
- `/v1/stats` shows 0 running and 0 waiting sequences (within a few seconds);
- the server's thread count (`/proc/<pid>/task`) is back to its level before the load, ± a margin;
- RSS grew less than 5 % from the end of the warm-up to the end;
- the three greedy answers are the same as before.

With --faults SPEC the server it starts gets `$HEARTH_FAULTS` (engine/core/faults.py), e.g.
`step_raise:model=smollm2-135m-instruct,after=300,times=3,every=500`: engine steps raise during the
load, so the engine dies and is restarted. A request answered with a documented fault error (500
`engine_failed`, before or mid-stream, or 503 `model_unavailable` while the engine restarts) counts
as `fault errors`, not as lost; every other outcome must be as without faults, and the greedy
answers after the restarts must be the same as before them.

Every POST route is exercised: chat, completions and Anthropic messages, and the routes in
`soak_requests.OPTIONAL_ROUTES` (Responses, embeddings, Ollama) when the server has them (found at start).

Without --url it starts Hearth on a free port (the helpers of `scripts/bench_servers.py`) and stops it after.
With --url the server's pid is found from its listening port (a local server run by this user) or
given with --pid; without one the thread and RSS checks are skipped. Exit status 0: all checks passed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_servers import first_model_id, free_port, hearth_cmd, server  # noqa: E402
from procinfo import local_pid, rss_mib, thread_names, threads  # noqa: E402
from soak_requests import (  # noqa: E402
    Tally,
    available_routes,
    greedy_answers,
    send_and_hang_up,
    send_bad,
    send_good,
)
from soak_warmup import warm_up  # noqa: E402

# ---------------------------------------------------------------- the load


@dataclass
class Options:
    url: str
    model: str
    pid: int | None
    duration: float
    concurrency: int
    max_tokens: int
    disconnect_fraction: float
    bad_fraction: float
    seed: int
    extra_routes: tuple[str, ...] = ()


async def load(opts: Options, tally: Tally, on_tick: Any) -> None:
    """C workers in a closed loop until the deadline; `on_tick(i)` runs at each tenth of the duration
    (i = 1..9; the first marks the end of the warm-up)."""
    limits = httpx.Limits(
        max_connections=opts.concurrency + 8, max_keepalive_connections=opts.concurrency + 8
    )
    timeout = httpx.Timeout(300.0, connect=10.0)
    start = time.monotonic()
    deadline = start + opts.duration

    async def worker(client: httpx.AsyncClient, i: int) -> None:
        rng = random.Random(opts.seed * 1000 + i)
        while time.monotonic() < deadline:
            roll = rng.random()
            try:
                if roll < opts.bad_fraction:
                    await send_bad(client, tally, opts.model, rng)
                elif roll < opts.bad_fraction + opts.disconnect_fraction:
                    await send_and_hang_up(client, tally, opts.model, rng)
                else:
                    await send_good(client, tally, opts.model, rng, opts.max_tokens, opts.extra_routes)
            except (httpx.HTTPError, ValueError) as e:
                tally.fail(f"{type(e).__name__}: {e}")

    async def ticks() -> None:
        for i in range(1, 10):
            await asyncio.sleep(max(0.0, start + opts.duration * i / 10 - time.monotonic()))
            on_tick(i)

    async with httpx.AsyncClient(base_url=opts.url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(ticks(), *(worker(client, i) for i in range(opts.concurrency)))


def idle_stats(url: str, wait: float) -> dict[str, tuple[int, int]]:
    """(running, waiting) per model still busy after up to `wait` seconds; empty when all are idle."""
    deadline = time.monotonic() + wait
    while True:
        stats = httpx.get(f"{url}/v1/stats", timeout=10).json()
        busy = {m: (s["running"], s["waiting"]) for m, s in stats.items() if s["running"] or s["waiting"]}
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.2)


def engine_restarts(url: str, model: str) -> float | None:
    """`hearth_engine_restarts_total` of `model` from /metrics (None when the server has none)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'hearth_engine_restarts_total{{model="{model}"}}'):
            return float(line.split()[-1])
    return None


def settle_threads(pid: int, target: int, margin: int, wait: float) -> int:
    """The thread count once it is within `margin` of `target`, or after `wait` seconds."""
    deadline = time.monotonic() + wait
    while (count := threads(pid)) > target + margin and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def soak(opts: Options, rss_limit: float, thread_margin: int) -> bool:
    """Run the load and the checks; print the summary; True when every check passed."""

    async def answers() -> list[str]:
        async with httpx.AsyncClient(base_url=opts.url, timeout=300.0) as client:
            return await greedy_answers(client, opts.model)

    before = asyncio.run(answers())
    asyncio.run(warm_up(opts.url, opts.model, opts.concurrency, opts.max_tokens))
    pid = opts.pid
    threads_before = threads(pid) if pid else None
    names_before = thread_names(pid) if pid else Counter()
    rss: dict[str, float] = {"primed": rss_mib(pid)} if pid else {}  # MiB, at the moments named
    stats_before = httpx.get(f"{opts.url}/v1/stats", timeout=10).json().get(opts.model, {})

    timeline: list[float] = []  # RSS (MiB) at each tenth of the load

    def on_tick(i: int) -> None:
        if pid:
            timeline.append(rss_mib(pid))
            if i == 1:
                rss["warm"] = timeline[-1]
                rss["warm_threads"] = threads(pid)

    tally = Tally()
    print(
        f"soak: {opts.duration:.0f} s at concurrency {opts.concurrency} against {opts.url} (pid {pid})",
        flush=True,
    )
    start = time.monotonic()
    asyncio.run(load(opts, tally, on_tick))
    wall = time.monotonic() - start
    if pid:
        rss["load_end"] = rss_mib(pid)

    busy = idle_stats(opts.url, wait=15)
    stats_after = httpx.get(f"{opts.url}/v1/stats", timeout=10).json().get(opts.model, {})
    after = asyncio.run(answers())
    checks: list[tuple[str, bool]] = [
        ("requests", tally.counts["failed"] == 0),
        ("idle engine", not busy),
        ("greedy answers", after == before),
    ]
    c = tally.counts
    total = c["ok"] + c["failed"] + c["expected_4xx"] + c["disconnects"] + c["fault_errors"]
    print(f"\nrequests: {total} in {wall:.0f} s ({total / wall:.1f}/s): {c['ok']} ok, {c['failed']} failed, "
          f"{c['expected_4xx']} expected 4xx, {c['disconnects']} disconnects, "
          f"{c['fault_errors']} fault errors (documented)")  # fmt: skip
    routes = {k.removeprefix("route "): v for k, v in sorted(c.items()) if k.startswith("route ")}
    print(f"routes: {routes}")
    restarts = engine_restarts(opts.url, opts.model)
    if restarts is not None:
        print(f"engine restarts during the load: {restarts:g}")
    aborted = stats_after.get("aborted", 0) - stats_before.get("aborted", 0)
    tokens = stats_after.get("generated_tokens", 0) - stats_before.get("generated_tokens", 0)
    print(f"engine: {tokens} tokens generated, {aborted} sequences aborted; still busy: {busy or 'none'}")
    for error in tally.errors:
        print(f"  failure: {error}")
    if pid:
        rss_end = rss["idle"] = rss_mib(pid)
        threads_end = settle_threads(pid, threads_before or 0, thread_margin, wait=10)
        growth = (rss_end / rss["warm"] - 1) * 100 if "warm" in rss else float("nan")
        checks += [
            ("threads", abs(threads_end - (threads_before or 0)) <= thread_margin),
            ("RSS growth", "warm" in rss and growth < rss_limit),
        ]
        if abs(threads_end - (threads_before or 0)) > thread_margin:
            grown = thread_names(pid)
            grown.subtract(names_before)
            print(f"  threads by name, change: {dict(+grown)} more, {dict(-grown)} fewer")
        warm_threads = int(rss["warm_threads"]) if "warm_threads" in rss else "?"
        print(f"threads: {threads_before} before, {warm_threads} after warm-up, "
              f"{threads_end} at the end (margin {thread_margin})")  # fmt: skip
        print(f"RSS: {rss.get('warm', float('nan')):.1f} MiB after warm-up, {rss_end:.1f} MiB at the end "
              f"({growth:+.2f} %, limit {rss_limit:g} %)")  # fmt: skip
        print(f"RSS (MiB): {rss['primed']:.0f} before the load; by tenths of it: "
              f"{' '.join(f'{v:.0f}' for v in timeline)}; {rss['load_end']:.0f} right after it, "
              f"{rss['idle']:.0f} after idle and the greedy answers")  # fmt: skip
    else:
        print("threads, RSS: not checked (no server pid; pass --pid)")
    print(
        f"greedy answers: {sum(a == b for a, b in zip(after, before, strict=True))}/{len(before)} as before"
    )
    failed = [name for name, ok in checks if not ok]
    print("soak: PASS" if not failed else f"soak: FAIL ({', '.join(failed)})", flush=True)
    return not failed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="server to soak; default: start Hearth on a free port")
    p.add_argument("--pid", type=int, help="the server's pid with --url (default: found from its port)")
    p.add_argument("--model", help="model to request (default: the first id /v1/models lists)")
    p.add_argument("--duration", type=float, default=600, help="seconds of load (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=32, help="clients (default: %(default)s)")
    p.add_argument(
        "--max-tokens", type=int, default=32, help="most tokens per request (default: %(default)s)"
    )
    p.add_argument("--disconnect-fraction", type=float, default=0.2, help="default: %(default)s")
    p.add_argument("--bad-fraction", type=float, default=0.05, help="default: %(default)s")
    p.add_argument("--rss-growth", type=float, default=5.0, help="most RSS growth, %% (default: %(default)s)")
    p.add_argument("--thread-margin", type=int, default=2, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hearth-config", type=Path, help="models.yaml for the Hearth it starts (--config)")
    p.add_argument("--hearth-python", type=Path, help="interpreter for Hearth (default: .venv's)")
    p.add_argument(
        "--faults",
        help="$HEARTH_FAULTS for the Hearth it starts (not with --url), e.g. "
        "step_raise:model=smollm2-135m-instruct,after=300,times=3,every=500",
    )
    args = p.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.max_tokens < 1:
        p.error("--duration, --concurrency and --max-tokens must be positive")
    return args


def run(args: argparse.Namespace, url: str) -> bool:
    pid = local_pid(url, args.pid)
    model = args.model or first_model_id(url)
    extra = tuple(available_routes(url))
    print(f"optional routes found: {', '.join(extra) or 'none'}", flush=True)
    opts = Options(
        url, model, pid, args.duration, args.concurrency, args.max_tokens,
        args.disconnect_fraction, args.bad_fraction, args.seed, extra,
    )  # fmt: skip
    return soak(opts, args.rss_growth, args.thread_margin)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.url:
            if args.faults:
                print("soak: --faults needs the server it starts (drop --url)", file=sys.stderr)
                return 2
            return 0 if run(args, args.url.rstrip("/")) else 1
        port = free_port()
        cmd = hearth_cmd(port, args.hearth_python, args.hearth_config, args.model)
        env = {"HEARTH_FAULTS": args.faults} if args.faults else None
        with server("hearth", cmd, port, env=env) as url:
            return 0 if run(args, url) else 1
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, httpx.HTTPError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Soak test: a bounded closed-loop load against Hearth, then checks that nothing leaked.

C clients send requests one after another for --duration seconds: chat (streamed or not), legacy
completions and Anthropic messages with a few dozen tokens each; about 20 % of them stream and hang up
after a few chunks, about 5 % are bad requests that must get a 4xx in the documented shape. Before
the load it records greedy answers to three fixed prompts and the server's thread count; during it,
the server's RSS at the end of the warm-up (the first 10 % of the duration). Afterwards it checks:

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
`OPTIONAL_ROUTES` (Responses, embeddings, Ollama) when the server has them (found at start).

Without --url it starts Hearth on a free port (the helpers of `scripts/bench_servers.py`) and stops it after.
With --url the server's pid is found from its listening port (a local server run by this user) or
given with --pid; without one the thread and RSS checks are skipped. Exit status 0: all checks passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_servers import first_model_id, free_port, hearth_cmd, server  # noqa: E402
from procinfo import local_pid, rss_mib, thread_names, threads  # noqa: E402

GREEDY_PROMPTS = ["What is the capital of France?", "List three fruits.", "Write a haiku about rain."]
PROMPTS = [
    "Tell me a story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "What should I cook tonight?",
    "Describe the water cycle.",
    "Write a short poem about autumn.",
    "Why is the sky blue?",
]


@dataclass
class Tally:
    """What the load did, by outcome; `errors` keeps the first few failures' descriptions."""

    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        self.counts["failed"] += 1
        if len(self.errors) < 10:
            self.errors.append(what)


# ---------------------------------------------------------------- requests


def chat_body(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        **extra,
    }


async def greedy_answers(client: httpx.AsyncClient, model: str) -> list[str]:
    out = []
    for prompt in GREEDY_PROMPTS:
        for _ in range(10):  # an injected fault may hit it (--faults): retry once the engine is back
            r = await client.post("/v1/chat/completions", json=chat_body(model, prompt, 24, temperature=0))
            if not fault_error(r.status_code, _json(r.content)):
                break
            await asyncio.sleep(2)
        r.raise_for_status()
        out.append(r.json()["choices"][0]["message"]["content"])
    return out


def bad_request(model: str, rng: random.Random) -> tuple[str, str, Any]:
    """(method, path, body) of a request that must get a 4xx; a `bytes` body is sent as is."""
    hi = [{"role": "user", "content": "hi"}]
    return rng.choice(
        [
            ("POST", "/v1/chat/completions", {"model": model, "messages": hi, "temperature": "hot"}),
            ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": hi}),
            ("POST", "/v1/chat/completions", b'{"model": "x", "messages": ['),
            ("POST", "/v1/chat/completions", chat_body(model, "word " * 5000, 8)),
            ("POST", "/v1/completions", {"model": model, "prompt": [10**9], "max_tokens": 4}),
            ("POST", "/anthropic/v1/messages", {"model": model, "messages": hi, "max_tokens": 0}),
            ("GET", "/v1/no-such-route", None),
            ("DELETE", "/v1/chat/completions", None),
        ]
    )


def error_shape_ok(path: str, data: Any) -> bool:
    if path.startswith(("/anthropic/", "/v1/messages")):
        return isinstance(data, dict) and data.get("type") == "error" and "message" in data.get("error", {})
    return isinstance(data, dict) and set(data.get("error", {})) >= {"message", "type", "param", "code"}


async def send_bad(client: httpx.AsyncClient, tally: Tally, model: str, rng: random.Random) -> None:
    method, path, body = bad_request(model, rng)
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    r = await client.request(method, path, content=content, headers={"content-type": "application/json"})
    try:
        data = r.json()
    except ValueError:
        data = None
    if 400 <= r.status_code < 500 and error_shape_ok(path, data):
        tally.counts["expected_4xx"] += 1
    else:
        tally.fail(f"bad request {method} {path}: {r.status_code} {r.text[:200]}")


# Routes other helpers add: (path, body(model, prompt, max_tokens, stream), can stream). Each is used
# only when the server has it (`available_routes`); a new route is one line here.
OPTIONAL_ROUTES: dict[str, tuple[str, Any, bool]] = {
    "responses": (
        "/v1/responses",
        lambda m, p, n, s: {"model": m, "input": p, "max_output_tokens": max(n, 16), "stream": s},
        True,
    ),
    # no model: the catalog's first embedding model (a generation model would be refused)
    "embeddings": ("/v1/embeddings", lambda m, p, n, s: {"input": p}, False),
    "ollama-chat": (
        "/api/chat",
        lambda m, p, n, s: {
            "model": m,
            "messages": [{"role": "user", "content": p}],
            "stream": s,
            "options": {"num_predict": n},
        },  # fmt: skip
        True,
    ),
    "ollama-generate": (
        "/api/generate",
        lambda m, p, n, s: {"model": m, "prompt": p, "stream": s, "options": {"num_predict": n}},
        True,
    ),
}


def available_routes(url: str) -> list[str]:
    """The `OPTIONAL_ROUTES` the server has: a POST of `{}` is not answered 404 or 405."""
    found = []
    for name, (path, _, _) in OPTIONAL_ROUTES.items():
        try:
            status = httpx.post(f"{url}{path}", json={}, timeout=30).status_code
        except httpx.HTTPError:
            continue
        if status not in (404, 405):
            found.append(name)
    if "embeddings" in found:  # load the embedding model now, before RSS is measured
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "warm up"}, timeout=300)
        if r.status_code != 200:
            found.remove("embeddings")  # the catalog has no embedding model
    return found


def fault_error(status: int, data: Any) -> bool:
    """A documented answer to an injected fault: 500 `engine_failed` (OpenAI shape; Anthropic's says
    so in its message) or 503 `model_unavailable` (the engine restarting)."""
    if not isinstance(data, dict):
        return False
    error = data.get("error")
    if not isinstance(error, dict):
        return False
    if status == 500:
        return error.get("code") == "engine_failed" or "engine is being restarted" in str(
            error.get("message")
        )
    return status == 503 and (
        error.get("code") == "model_unavailable" or error.get("type") == "overloaded_error"
    )


def good_request(
    model: str, rng: random.Random, max_tokens: int, extra_routes: Sequence[str] = ()
) -> tuple[str, dict[str, Any], bool]:
    """(path, body, stream) of a normal request."""
    prompt = rng.choice(PROMPTS)
    n = rng.randint(max(1, max_tokens // 4), max_tokens)
    temperature = rng.choice([0, 0.7, 1.0])
    stream = rng.random() < 0.5
    kind = rng.random()
    if extra_routes and rng.random() < 0.25:
        path, make, can_stream = OPTIONAL_ROUTES[rng.choice(list(extra_routes))]
        return path, make(model, prompt, n, stream and can_stream), stream and can_stream
    if kind < 0.6:
        extra = {"stream_options": {"include_usage": True}} if stream else {}
        return (
            "/v1/chat/completions",
            chat_body(model, prompt, n, temperature=temperature, stream=stream, **extra),
            stream,
        )
    if kind < 0.8:
        return (
            "/v1/completions",
            {"model": model, "prompt": prompt, "max_tokens": n, "stream": stream},
            stream,
        )
    body = chat_body(model, prompt, n, temperature=min(temperature, 1.0), stream=stream)
    return "/anthropic/v1/messages", body, stream


async def send_good(
    client: httpx.AsyncClient,
    tally: Tally,
    model: str,
    rng: random.Random,
    max_tokens: int,
    extra_routes: Sequence[str] = (),
) -> None:
    path, body, stream = good_request(model, rng, max_tokens, extra_routes)
    tally.counts[f"route {path}"] += 1
    if not stream:
        r = await client.post(path, json=body)
        data = _json(r.content)
        if r.status_code == 200 and isinstance(data, dict) and data.get("error") is None:
            tally.counts["ok"] += 1
        elif fault_error(r.status_code, data):
            tally.counts["fault_errors"] += 1
        else:
            tally.fail(f"POST {path}: {r.status_code} {r.text[:200]}")
        return
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            text = await r.aread()
            if fault_error(r.status_code, _json(text)):
                tally.counts["fault_errors"] += 1
            else:
                tally.fail(f"POST {path} (stream): {r.status_code} {text[:200]!r}")
            return
        lines = [line async for line in r.aiter_lines()]
    errors = [line for line in lines if line.startswith(("event: error", 'data: {"error"'))]
    if errors and all("engine_failed" in e or "engine is being restarted" in e for e in _payloads(lines)):
        tally.counts["fault_errors"] += 1
    elif not errors and _stream_ended(path, lines):
        tally.counts["ok"] += 1
    else:
        tally.fail(f"POST {path} (stream) ended badly: {(errors or lines[-3:])}")


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


def _payloads(lines: list[str]) -> list[str]:
    """The data lines of a stream's error events."""
    out, error_event = [], False
    for line in lines:
        if line.startswith("event:"):
            error_event = line == "event: error"
        elif line.startswith("data:") and (error_event or line.startswith('data: {"error"')):
            out.append(line)
    return out


def _stream_ended(path: str, lines: list[str]) -> bool:
    """Whether a stream ended as its API ends one (OpenAI `[DONE]`, Anthropic `message_stop`, the
    Responses API's `response.completed`, Ollama's `"done": true` line)."""
    if path.startswith(("/anthropic", "/v1/messages")):
        return "event: message_stop" in lines
    if path == "/v1/responses":  # incomplete: cut at max_output_tokens, as asked
        return "event: response.completed" in lines or "event: response.incomplete" in lines
    if path.startswith("/api/"):
        return bool(lines) and '"done":true' in lines[-1].replace(" ", "")
    return "data: [DONE]" in lines


async def send_and_hang_up(client: httpx.AsyncClient, tally: Tally, model: str, rng: random.Random) -> None:
    """Stream a long answer and close the connection after a few chunks."""
    body = chat_body(model, rng.choice(PROMPTS), 256, stream=True, ignore_eos=True)
    keep = rng.randint(1, 6)
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            if fault_error(r.status_code, _json(await r.aread())):
                tally.counts["fault_errors"] += 1
            else:
                tally.fail(f"disconnecting stream: {r.status_code}")
            return
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data:")
            if seen >= keep:
                break
    tally.counts["disconnects"] += 1


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


async def prime(opts: Options) -> None:
    """Bursts of concurrent requests, so that the server's pools of worker threads (which grow on demand
    and then stay) are full before the threads are counted: prompt rendering, then generation."""
    width = max(opts.concurrency, 32)
    async with httpx.AsyncClient(base_url=opts.url, timeout=300.0) as client:
        for _ in range(2):
            await asyncio.gather(
                *(
                    client.post("/anthropic/v1/messages/count_tokens", json=chat_body(opts.model, p, 1))
                    for p in PROMPTS * (width // len(PROMPTS) + 1)
                )
            )
            bodies = [chat_body(opts.model, p, 2, stream=i % 2 == 1) for i, p in enumerate(PROMPTS * width)]
            await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies[:width]))


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
    asyncio.run(prime(opts))
    pid = opts.pid
    threads_before = threads(pid) if pid else None
    names_before = thread_names(pid) if pid else Counter()
    rss: dict[str, float] = {}
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
        rss_end = rss_mib(pid)
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
        print(f"RSS by tenths of the load (MiB): {' '.join(f'{v:.0f}' for v in timeline)}")
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

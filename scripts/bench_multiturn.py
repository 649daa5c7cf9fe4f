"""`scripts/bench --multiturn`: many users in multi-turn conversations sharing one system prompt.

Every user sends `--turns` chat requests, one after the other, each with the whole conversation so
far (the shared system prompt, earlier questions and the server's own answers) and a new question;
all users run at once. Per turn the table gives TTFT p50/p99 and the prompt tokens sent and
computed (sent minus those the server reports as cached: Hearth's `cached_tokens`, llama-server's
`timings.prompt_n`). A prefix cache shows as computed tokens far below the tokens sent and a TTFT
that does not grow with the conversation.

Servers, one after the other: Hearth as its catalog says; the same Hearth with `prefix_cache: false`
(a copy of the catalog beside it, removed afterwards); and, with `--llama-server PATH`, llama.cpp's
`llama-server` on the model's GGUF file (`cache_prompt` on, `-np` = users, `--peer-ctx` tokens shared
by its slots). `--only LEG` runs the chosen legs alone (hearth, hearth-no-cache, llama-server;
repeatable). `--url` measures one running server instead.

Every request opens a connection of its own, for every server (`bench_client.connection_limits`:
llama-server drops a connection after each streamed response while promising keep-alive). A failed
request is counted in the table's `failed` column and ends that user's conversation; the bench then
exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from bench_client import Target, connection_limits, full_body, percentile
from bench_servers import ROOT, first_model_id, free_port, gguf_of, hearth_cmd, llama_cmd, server

SYSTEM = (
    "You are the help desk of the Harbor Street public library. Opening hours: Monday to Friday "
    "9:00 to 20:00, Saturday 10:00 to 16:00, closed on Sundays and public holidays. Members may "
    "borrow up to 12 items at once: books for four weeks, films and games for one week, and "
    "magazines for two weeks. Renewals are possible twice unless another member has reserved the "
    "item. Late returns cost 20 cents a day per item, at most 5 euros per item. Lost items are "
    "charged at their replacement price plus a 3 euro handling fee. The reading room on the second "
    "floor is silent; group study rooms on the third floor can be booked for two hours a day. "
    "Printing costs 10 cents a page in black and white and 40 cents in colour. Wi-Fi is free; the "
    "network is HarborGuest and needs no password. Children under 12 must be accompanied by an "
    "adult after 18:00. Answer questions briefly and politely, in two or three sentences, and "
    "never invent rules that are not listed here."
)
QUESTIONS = [
    "How many books can I borrow at once?",
    "And how long can I keep a film?",
    "What happens if I return it three days late?",
    "Can I renew it?",
    "Where can my study group meet?",
    "Is there anything else I should know before my visit on Saturday?",
    "How much does printing a colour page cost?",
    "Can my ten-year-old come alone in the evening?",
]


async def turn(
    client: httpx.AsyncClient, target: Target, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    """One streamed chat request: TTFT, the answer's text, prompt tokens sent and computed."""
    body = full_body(target, {"messages": messages, "max_tokens": max_tokens})
    start = time.perf_counter()
    ttft: float | None = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    async with client.stream("POST", f"{target.url}{target.path}", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(str(event["error"])[:300])
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    text.append(piece)
    prompt = int(usage.get("prompt_tokens") or 0)
    if "prompt_n" in timings:  # llama-server: the prompt tokens it evaluated
        computed = int(timings["prompt_n"])
    else:
        computed = prompt - int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"ttft": ttft, "text": "".join(text), "prompt": prompt, "computed": computed}


READ_TIMEOUT = 1800.0  # seconds without a byte: llama-server on a busy 2-core machine is slow, not dead
LEGS = ("hearth", "hearth-no-cache", "llama-server")
Turns = list[list[dict[str, Any]]]  # per turn, each user's figures


async def conversations(target: Target, users: int, turns: int, max_tokens: int) -> Turns:
    """All users at once; per turn, each user's figures. A failed request is recorded (`error`) and
    ends its user's conversation (the next turn would need its answer); the others go on."""
    per_turn: Turns = [[] for _ in range(turns)]
    limits = connection_limits(users)

    async def user(client: httpx.AsyncClient, u: int) -> None:
        messages = [{"role": "system", "content": SYSTEM}]
        for t in range(turns):
            question = f"(Member {u}.) {QUESTIONS[(u + t) % len(QUESTIONS)]}"
            messages.append({"role": "user", "content": question})
            try:
                result = await turn(client, target, messages, max_tokens)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                per_turn[t].append({"error": f"user {u}, turn {t + 1}: {type(exc).__name__}: {exc}"})
                return
            messages.append({"role": "assistant", "content": result.pop("text")})
            per_turn[t].append(result)

    timeout = httpx.Timeout(READ_TIMEOUT, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(user(client, u) for u in range(users)))
    return per_turn


def errors(per_turn: Turns) -> list[str]:
    return [r["error"] for results in per_turn for r in results if "error" in r]


def rows(per_turn: Turns) -> list[dict[str, Any]]:
    out = []
    for t, every in enumerate(per_turn):
        results = [r for r in every if "error" not in r]
        ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
        out.append(
            {
                "turn": t + 1,
                "requests": len(results),
                "failed": len(every) - len(results),
                "ttft_p50": round(percentile(ttfts, 50), 3),
                "ttft_p99": round(percentile(ttfts, 99), 3),
                "prompt_tokens": sum(r["prompt"] for r in results),
                "computed_tokens": sum(r["computed"] for r in results),
            }
        )
    return out


def table(label: str, data: list[dict[str, Any]]) -> str:
    lines = [
        f"### {label}",
        "",
        "| turn | requests | failed | TTFT p50 s | TTFT p99 s | prompt tokens | computed |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data:
        lines.append(
            f"| {r['turn']} | {r['requests']} | {r['failed']} | {r['ttft_p50']} | {r['ttft_p99']} | "
            f"{r['prompt_tokens']} | {r['computed_tokens']} |"
        )
    total_p, total_c = sum(r["prompt_tokens"] for r in data), sum(r["computed_tokens"] for r in data)
    done, failed = sum(r["requests"] for r in data), sum(r["failed"] for r in data)
    lines.append(f"| all | {done} | {failed} | | | {total_p} | {total_c} |")
    return "\n".join(lines)


@contextmanager
def no_cache_catalog(config: Path, model: str | None) -> Iterator[Path]:
    """A copy of `config` beside it (its relative paths still hold) with `prefix_cache: false` on
    `model` (default: the catalog's default); removed afterwards."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    name = model or data.get("default") or data["models"][0]["id"]
    for entry in data["models"]:
        if name == entry["id"] or name in (entry.get("aliases") or []):
            entry["prefix_cache"] = False
    copy = config.with_name(f".bench-multiturn-{free_port()}.yaml")
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        yield copy
    finally:
        copy.unlink(missing_ok=True)


@contextmanager
def started(kind: str, args: argparse.Namespace) -> Iterator[Target]:
    """The server of `kind` (hearth, hearth-no-cache, llama-server), running, as a target."""
    if args.url:
        url = args.url.rstrip("/")
        yield Target(kind, url, args.model or first_model_id(url), {})
        return
    port = free_port()
    config = (args.hearth_config or ROOT / "models.yaml").resolve()
    if kind == "llama-server":
        args.peer_parallel = args.users
        gguf = args.peer_gguf or gguf_of(args.hearth_config, [args.model] if args.model else [])
        with server("peer", llama_cmd(args, gguf.resolve(), port), port) as url:
            yield Target("llama-server (cache_prompt)", url, first_model_id(url), {"cache_prompt": True})
    elif kind == "hearth-no-cache":
        with no_cache_catalog(config, args.model) as copy:
            with server("hearth", hearth_cmd(port, args.hearth_python, copy, args.model), port) as url:
                yield Target("hearth, prefix_cache: false", url, args.model or first_model_id(url), {})
    else:
        with server("hearth", hearth_cmd(port, args.hearth_python, config, args.model), port) as url:
            yield Target("hearth", url, args.model or first_model_id(url), {})


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench --multiturn", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, help="conversations at once (default: 32; --quick: 2)")
    p.add_argument("--turns", type=int, help="requests per conversation (default: 6; --quick: 2)")
    p.add_argument("--max-tokens", type=int, help="answer length per turn (default: 64; --quick: 8)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 users x 2 turns of 8 tokens")
    p.add_argument("--url", help="measure this running server only")
    p.add_argument("--model", help="catalog model (default: the catalog's default)")
    p.add_argument("--hearth-config", type=Path, help="models.yaml (default: the repository's)")
    p.add_argument("--hearth-python", type=Path, help="python that runs Hearth (default: .venv's)")
    p.add_argument("--llama-server", type=Path, help="also measure llama.cpp's llama-server (its binary)")
    p.add_argument("--peer-gguf", type=Path, help="llama-server's GGUF file (default: the model's)")
    p.add_argument("--peer-threads", type=int, default=2, help="llama-server -t (default: %(default)s)")
    p.add_argument("--peer-ctx", type=int, default=65536, help="llama-server -c (default: %(default)s)")
    p.add_argument(
        "--only",
        action="append",
        choices=LEGS,
        help="run only this leg (repeatable; default: every leg the other options ask for)",
    )
    p.add_argument("--json", help="write the per-turn figures of every server to this file")
    args = p.parse_args(argv)
    args.users = args.users or (2 if args.quick else 32)
    args.turns = args.turns or (2 if args.quick else 6)
    args.max_tokens = args.max_tokens or (8 if args.quick else 64)
    if min(args.users, args.turns, args.max_tokens) < 1:
        p.error("--users, --turns and --max-tokens must be >= 1")
    if args.only and "llama-server" in args.only and not args.llama_server:
        p.error("--only llama-server needs --llama-server PATH")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    kinds = ["hearth"] if args.url else ["hearth", "hearth-no-cache"]
    if args.llama_server and not args.url:
        kinds.append("llama-server")
    if args.only and not args.url:
        kinds = [k for k in LEGS if k in args.only]
    results: dict[str, list[dict[str, Any]]] = {}
    status = 0
    for kind in kinds:
        with started(kind, args) as target:
            warm = errors(asyncio.run(conversations(target, 1, 1, 4)))  # a conversation of its own
            if warm:
                raise SystemExit(f"bench: the warm-up request failed: {warm[0][:300]}")
            start = time.perf_counter()
            per_turn = asyncio.run(conversations(target, args.users, args.turns, args.max_tokens))
            wall = time.perf_counter() - start
        data = rows(per_turn)
        results[target.name] = data
        print(f"\n{table(f'{target.name}: {wall:.1f} s', data)}", flush=True)
        failures = errors(per_turn)
        if failures:
            print(f"{len(failures)} failed requests; the first: {failures[0][:300]}", flush=True)
            status = 1
    print(
        f"\n{args.users} users x {args.turns} turns, {args.max_tokens}-token answers, a shared "
        f"{len(SYSTEM.split())}-word system prompt, streamed, temperature 0"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "servers": results}, default=str, indent=1)
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

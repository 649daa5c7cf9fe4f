"""The soak's requests (`scripts/soak.py`): the good ones of every POST route (streamed or not),
the bad ones that must get a 4xx in their documented shape, the streams hung up mid-way, and the
greedy answers compared before and after; each outcome counted in a `Tally`.

A documented answer to an injected fault (`--faults`) counts as a fault error, not as a failure.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

HANG_UP_TOKENS = 256  # what a stream that is hung up asks for (it hangs up after a few chunks)
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
    so in its message) or 503 `model_unavailable` (the engine restarting); Ollama's shape is a string
    `error` saying the same."""
    if not isinstance(data, dict):
        return False
    error = data.get("error")
    if isinstance(error, str):  # Ollama: {"error": "..."}
        return status in (500, 503) and ("engine" in error and ("restart" in error or "failed" in error))
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
    body = chat_body(model, rng.choice(PROMPTS), HANG_UP_TOKENS, stream=True, ignore_eos=True)
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

"""Small helpers shared by the test modules: error-shape checks, request bodies, engine idleness, an app
without a model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from server.state import AppState
from tests.launch import MODEL, Server

OPENAI_ERROR_FIELDS = {"message", "type", "param", "code"}


def assert_openai_error(
    response: httpx.Response, status: int, param: str | None, code: str | None = None, type: str | None = None
) -> dict[str, Any]:
    """The OpenAI error shape, `{"error": {"message", "type", "param", "code"}}`, naming `param`;
    `code` and `type` checked when given. Returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == OPENAI_ERROR_FIELDS
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    if type is not None:
        assert error["type"] == type
    return error


def assert_anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    """Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == error_type
    message: str = body["error"]["message"]
    assert message
    return message


def post_malformed_json(url: str) -> httpx.Response:
    """A body cut off mid-array."""
    content = b'{"model": "x", "messages": ['
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=30)


def long_story(max_tokens: int = 3000, stream: bool = False) -> dict[str, Any]:
    """A greedy chat request that runs for exactly `max_tokens` tokens (`ignore_eos`)."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def total(stats: Mapping[str, Mapping[str, float]], counter: str) -> float:
    """`counter` summed over the loaded engines of a `/v1/stats` answer."""
    return sum(engine[counter] for engine in stats.values())


def wait_idle(
    server: Server, headers: Mapping[str, str] | None = None, timeout: float = 30
) -> dict[str, dict[str, float]]:
    """Until no engine holds a sequence (a closed stream frees its slot at the next step); the stats
    then. Raises `AssertionError` when still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server.stats(headers)
        if total(stats, "running") + total(stats, "waiting") == 0:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy: {stats}")
        time.sleep(0.1)


def drop_stream(url: str, body: dict[str, Any], marker: str, count: int = 5) -> None:
    """Start a streamed request and hang up once `count` lines starting with `marker` came."""
    with httpx.stream("POST", url, json=body, timeout=120) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith(marker)
            if seen >= count:
                break


def app_client(settings: Settings, registry: Any) -> TestClient:
    """The real app with `registry` in place of the models `lifespan` would load (which does not run)."""
    app = create_app(settings)
    app.state.hearth = AppState(settings=settings, registry=registry, default_model="tiny", started_at=0)
    return TestClient(app)

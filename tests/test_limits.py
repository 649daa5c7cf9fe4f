"""Limits at the HTTP edge: body size, JSON depth, message count, request deadlines (`server.http.limits`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from server.http.limits import too_deep
from server.settings import Settings
from tests.conftest import MODEL, Server
from tests.helpers import app_client, assert_openai_error, long_story, wait_idle

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def assert_400(response: httpx.Response, param: str | None = None) -> str:
    return str(assert_openai_error(response, 400, param, type="invalid_request_error")["message"])


@pytest.fixture
def api() -> TestClient:
    """The real app without a model: the limits are checked before a model is looked up."""
    return app_client(Settings(config_path=Path("unused.yaml"), max_messages=3, max_json_depth=8), None)


def test_too_deep_counts_arrays_and_objects() -> None:
    assert not too_deep({"a": nested(63)}, 64)
    assert too_deep({"a": nested(64)}, 64)
    assert not too_deep({"a": [{"b": [1, "x"]}, {"c": {}}]}, 4)
    assert too_deep({"a": [{"b": [[]]}]}, 4)
    assert not too_deep({"a": "[[[[[[[[[[[[[["}, 2)


def test_limits_without_a_server(api: TestClient) -> None:
    body = {"model": "tiny", "messages": USER}
    assert "deeper than 8" in assert_400(api.post(CHAT, json={**body, "x": nested(8)}))
    assert_400(api.post(CHAT, json={**body, "messages": USER * 4}), param="messages")
    assert_400(api.post(CHAT, json={**body, "timeout": 0}), param="timeout")
    assert_400(api.post(CHAT, json={**body, "timeout": "5"}), param="timeout")
    assert_400(api.post(CHAT, json=body, headers={"x-request-timeout": "soon"}))
    assert_400(api.post(CHAT, json=body, headers={"x-request-timeout": "inf"}))


def test_body_over_the_limit_is_413(server: Server) -> None:
    body = json.dumps({"model": MODEL, "messages": USER, "pad": "x" * (5 * 1024 * 1024)})
    response = httpx.post(f"{server.url}{CHAT}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_json_is_400(server: Server, depth: int) -> None:
    content = b'{"model": "smollm2", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    message = assert_400(httpx.post(f"{server.url}{CHAT}", content=content, timeout=60))
    assert "nests" in message


def test_json_at_the_depth_limit_reaches_validation(server: Server) -> None:
    body = {"model": MODEL, "messages": USER, "probe": nested(63), "max_tokens": 1}  # depth 64
    assert httpx.post(f"{server.url}{CHAT}", json=body, timeout=60).status_code == 200


def test_too_many_messages_is_400(server: Server) -> None:
    body = {"model": MODEL, "messages": USER * 1025}
    assert "1025" in assert_400(httpx.post(f"{server.url}{CHAT}", json=body, timeout=60), param="messages")


def test_timeout_field_ends_a_request_with_504_and_aborts_it(server: Server) -> None:
    aborted = server.stats()[MODEL]["aborted"]
    started = time.monotonic()
    response = httpx.post(f"{server.url}{CHAT}", json={**long_story(), "timeout": 1.0}, timeout=120)
    assert time.monotonic() - started < 10
    assert response.status_code == 504
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "request_timeout")
    stats = wait_idle(server)[MODEL]
    assert stats["running"] == 0 and stats["aborted"] == aborted + 1


def test_timeout_header_cuts_a_stream_with_an_error_event(server: Server) -> None:
    aborted = server.stats()[MODEL]["aborted"]
    url, headers = f"{server.url}{CHAT}", {"x-request-timeout": "4"}
    with httpx.stream("POST", url, json=long_story(stream=True), headers=headers, timeout=120) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks)
    assert chunks[-1]["error"]["code"] == "request_timeout"
    stats = wait_idle(server)[MODEL]
    assert stats["running"] == 0 and stats["aborted"] == aborted + 1


def test_a_request_within_its_timeout_is_unaffected(server: Server) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 3, "timeout": 120}
    response = httpx.post(f"{server.url}{CHAT}", json=body, headers={"x-request-timeout": "100"}, timeout=120)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] >= 1

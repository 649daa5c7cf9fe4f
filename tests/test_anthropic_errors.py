"""Every bad-input class on the Anthropic routes answers in Anthropic's error shape."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import MODEL, Server
from tests.helpers import assert_anthropic_error, post_malformed_json

HI: list[Any] = [{"role": "user", "content": "hi"}]
TOOL: dict[str, Any] = {"name": "f", "input_schema": {"type": "object"}}


def _post(server: Server, body: object, path: str = "/anthropic/v1/messages") -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_malformed_json(server: Server) -> None:
    assert_anthropic_error(
        post_malformed_json(f"{server.url}/anthropic/v1/messages"), 400, "invalid_request_error"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": MODEL, "messages": HI}, "max_tokens"),
        ({"max_tokens": 5, "messages": HI}, "model"),
        ({"model": MODEL, "max_tokens": 5}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 0, "messages": HI}, "max_tokens"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "hi"}]},
            "messages.0.role",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "temperature": 1.5}, "temperature"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "top_p": 2}, "top_p"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "top_k": -1}, "top_k"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "stop_sequences": [""]}, "stop_sequences"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "stream": "yes"}, "stream"),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "system": 3}, "system"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "tool_choice": {"type": "auto"}}, "tool_choice"),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": HI,
                "tools": [TOOL],
                "tool_choice": {"type": "tool"},
            },
            "tool_choice",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": HI,
                "tools": [TOOL],
                "tool_choice": {"type": "tool", "name": "g"},
            },
            "tool_choice",
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [{"name": "bad name!"}]}, "tools.0"),
        (
            {
                "model": MODEL,
                "max_tokens": 2000,
                "messages": HI,
                "thinking": {"type": "enabled", "budget_tokens": 10},
            },
            "thinking",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 1024,
                "messages": HI,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            "max_tokens",
        ),
    ],
)
def test_invalid_request(server: Server, body: dict[str, Any], field: str) -> None:
    message = assert_anthropic_error(_post(server, body), 400, "invalid_request_error")
    assert field in message


def test_misplaced_tool_result(server: Server) -> None:
    turn = {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}
    body = {"model": MODEL, "max_tokens": 5, "messages": [*HI, turn, *HI]}
    assert "messages.1.content.0" in assert_anthropic_error(_post(server, body), 400, "invalid_request_error")


def test_unknown_model_is_not_found(server: Server) -> None:
    assert_anthropic_error(
        _post(server, {"model": "no-such-model", "max_tokens": 5, "messages": HI}), 404, "not_found_error"
    )
    assert_anthropic_error(
        _post(server, {"model": "no-such-model", "messages": HI}, "/v1/messages/count_tokens"),
        404,
        "not_found_error",
    )


def test_unknown_route_and_method(server: Server) -> None:
    assert_anthropic_error(
        httpx.get(f"{server.url}/anthropic/v1/nothing", timeout=30), 404, "not_found_error"
    )
    assert_anthropic_error(httpx.get(f"{server.url}/v1/messages", timeout=30), 405, "invalid_request_error")


def test_context_too_long(server: Server) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "word " * 5000}]}
    assert_anthropic_error(_post(server, body), 400, "invalid_request_error")


def test_sdk_raises_typed_errors(server: Server) -> None:
    claude = anthropic.Anthropic(base_url=f"{server.url}/anthropic", api_key="x", max_retries=0, timeout=60)
    with pytest.raises(anthropic.NotFoundError) as not_found:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=MODEL, max_tokens=5, messages=HI, extra_body={"temperature": 1.5})


def test_openai_routes_keep_the_openai_shape(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "no-such-model", "messages": HI}, timeout=30
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"

"""Every bad-input class answers with its status and the OpenAI error shape naming the field."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL, Server
from tests.helpers import OPENAI_ERROR_FIELDS, assert_openai_error, post_malformed_json

HI = [{"role": "user", "content": "hi"}]


def _post(server: Server, body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)


def test_malformed_json(server: Server) -> None:
    err = assert_openai_error(post_malformed_json(f"{server.base_url}/chat/completions"), 400, None)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, "model"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"model": MODEL, "messages": HI, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": HI, "temperature": 2.5}, "temperature"),
        ({"model": MODEL, "messages": HI, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": HI, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": HI, "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "messages": HI, "max_completion_tokens": -1}, "max_completion_tokens"),
        ({"model": MODEL, "messages": HI, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": HI, "stop": [""]}, "stop.0"),
        ({"model": MODEL, "messages": HI, "stream": "yes"}, "stream"),
    ],
)
def test_invalid_fields_name_the_field(server: Server, body: dict, param: str) -> None:
    err = assert_openai_error(_post(server, body), 400, param)
    assert err["type"] == "invalid_request_error"


def test_body_that_is_not_an_object(server: Server) -> None:
    assert_openai_error(_post(server, ["not", "an", "object"]), 400, None)


def test_unknown_model(server: Server) -> None:
    assert_openai_error(_post(server, {"model": "nope", "messages": HI}), 404, "model", "model_not_found")


def test_context_window_exceeded(server: Server) -> None:
    long = [{"role": "user", "content": "word " * 5000}]
    assert_openai_error(
        _post(server, {"model": MODEL, "messages": long}), 400, "messages", "context_length_exceeded"
    )
    assert_openai_error(
        _post(server, {"model": MODEL, "messages": HI, "max_tokens": 100_000}),
        400,
        "max_tokens",
        "context_length_exceeded",
    )


def test_unknown_route(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/nothing-here", timeout=10)
    assert_openai_error(r, 404, None)


def test_wrong_method(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/chat/completions", timeout=10)
    assert r.status_code == 405
    assert set(r.json()["error"]) == OPENAI_ERROR_FIELDS


def test_server_still_serves_after_bad_input(server: Server) -> None:
    r = _post(server, {"model": MODEL, "messages": HI, "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3 or r.json()["choices"][0]["finish_reason"] == "stop"

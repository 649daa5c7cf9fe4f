"""Errors in the OpenAI shape: `server.http.errors` units, and the HTTP edge of the app without a model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from engine import ModelConfig, ModelLoadError, UnknownModelError
from server.app import RequestIdMiddleware
from server.http.errors import APIError, error_type_for, exception_handlers, param_path
from server.settings import Settings
from tests.helpers import app_client, assert_openai_error

REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


class FakeRegistry:
    """The registry surface the routes use; `broken` fails to load, nothing ever loads."""

    def __init__(self) -> None:
        self._models = (
            ModelConfig(id="tiny", source="x", aliases=("t",)),
            ModelConfig(id="broken", source="x"),
        )

    def models(self) -> tuple[ModelConfig, ...]:
        return self._models

    def resolve(self, name: str) -> ModelConfig:
        for cfg in self._models:
            if name in cfg.names:
                return cfg
        raise UnknownModelError(name)

    def peek(self, model_id: str) -> Any:
        return None

    def peek_served(self, model_id: str) -> Any:
        return None

    async def aget(self, name: str) -> Any:
        raise ModelLoadError(self.resolve(name).id, "no weights in this test")


@pytest.fixture
def api() -> TestClient:
    """The real app with a fake registry put in place of what `lifespan` would load."""
    return app_client(Settings(config_path=Path("unused.yaml"), max_body_bytes=1000), FakeRegistry())


def assert_error(response: Any, status: int, param: str | None = None, code: str | None = None) -> str:
    """Checks the shape and the request id; returns the message."""
    error = assert_openai_error(response, status, param, type=error_type_for(status))
    assert REQUEST_ID.match(response.headers["x-request-id"])
    assert error["code"] == code
    return str(error["message"])


def test_error_type_by_status() -> None:
    assert [error_type_for(s) for s in (400, 401, 404, 413, 429, 500, 503)] == [
        "invalid_request_error",
        "authentication_error",
        "invalid_request_error",
        "invalid_request_error",
        "rate_limit_error",
        "server_error",
        "server_error",
    ]


def test_api_error_body() -> None:
    error = APIError(404, "gone", param="model", code="model_not_found")
    assert error.body() == {
        "error": {
            "message": "gone",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert APIError(503, "x", type="custom").type == "custom"


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("messages", 0, "role"), "messages.0.role"),
        (("messages", 0, "content", "list[TextPart]", 0, "type"), "messages.0.content.0.type"),
        (("stop", "list[constrained-str]", 4), "stop.4"),
        (("stop", "constrained-str"), "stop"),
        (("messages", 1, "ChatMessage", "content", "str"), "messages.1.content"),
        ((), None),
    ],
)
def test_param_path_drops_union_tags(loc: tuple[int | str, ...], param: str | None) -> None:
    assert param_path(loc) == param


def test_every_response_has_a_request_id(api: TestClient) -> None:
    first = api.get("/health")
    assert first.json() == {"status": "ok"}
    second = api.get("/health")
    assert REQUEST_ID.match(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_unknown_route_is_a_404_in_the_shape(api: TestClient) -> None:
    assert "/v1/nothing" in assert_error(api.get("/v1/nothing"), 404)


def test_wrong_method_is_a_405_in_the_shape(api: TestClient) -> None:
    response = api.get(CHAT)
    assert_error(response, 405)
    assert "POST" in response.headers["allow"]


def test_malformed_json(api: TestClient) -> None:
    message = assert_error(api.post(CHAT, content=b'{"model": '), 400)
    assert message.startswith("could not parse JSON body")
    assert_error(api.post(CHAT, content=b""), 400)
    assert_error(api.post(CHAT, content=b"[1, 2]"), 400)
    assert_error(api.post(CHAT, content=b'{"model": "tiny", "temperature": NaN}'), 400)
    assert_error(api.post(CHAT, content=b'{"model": "\xff"}'), 400)


def test_body_over_the_limit_is_a_413(api: TestClient) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_error(api.post(CHAT, json=body), 413, code="request_too_large")


def test_validation_error_names_the_dotted_field(api: TestClient) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}
    assert_error(api.post(CHAT, json=body), 400, param="messages.0.role", code="invalid_value")
    body = {"model": "tiny", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}
    assert_error(api.post(CHAT, json=body), 400, param="stop", code="invalid_value")
    body = {"model": "tiny", "messages": USER, "enable_search": True}
    assert_error(api.post(CHAT, json=body), 400, param="enable_search", code="invalid_value")


def test_n_over_the_cap(api: TestClient) -> None:
    assert_error(api.post(CHAT, json={"model": "tiny", "messages": USER, "n": 9}), 400, param="n")


def test_unknown_model(api: TestClient) -> None:
    response = api.post(CHAT, json={"model": "nope", "messages": USER})
    assert "nope" in assert_error(response, 404, param="model", code="model_not_found")
    assert_error(api.get("/v1/models/nope"), 404, param="model", code="model_not_found")


def test_model_that_fails_to_load_is_a_503(api: TestClient) -> None:
    response = api.post(CHAT, json={"model": "broken", "messages": USER})
    assert "no weights" in assert_error(response, 503, code="model_unavailable")


def test_models_list_and_alias(api: TestClient) -> None:
    listing = api.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny", "broken"]
    assert listing["data"][0] == {
        "id": "tiny",
        "object": "model",
        "created": 0,
        "owned_by": "hearth",
        "loaded": False,
        "source": "x",
        "dtype": "auto",
        "device": "auto",
        "quantization": "auto",
        "task": "generate",
        "endpoints": ["/v1/chat/completions", "/v1/completions", "/v1/messages"],
    }
    assert api.get("/v1/models/t").json()["id"] == "tiny"


def test_unhandled_exception_is_a_500_in_the_shape(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("bug")

    app = Starlette(
        routes=[Route("/boom", boom)],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=exception_handlers(),
    )
    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert_error(response, 500)
    assert "bug" not in response.json()["error"]["message"]
    assert "unhandled error" in caplog.text


def test_api_error_raised_in_a_route_keeps_its_headers() -> None:
    async def busy(request: Request) -> Response:
        raise APIError(429, "queue full", code="queue_full", headers={"Retry-After": "1"})

    app = Starlette(routes=[Route("/busy", busy)], exception_handlers=exception_handlers())
    response = TestClient(app).get("/busy")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"

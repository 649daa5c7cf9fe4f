"""One error type for the HTTP edge and the handlers that render every failure in the OpenAI error shape.

Body: `{"error": {"message", "type", "param", "code"}}`; see the error table in `docs/api.md`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server.anthropic.errors import anthropic_error_body, is_anthropic_path
from server.ollama.errors import is_ollama_path, ollama_error_body

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    """The OpenAI `type` a status gets when none is given."""
    if status >= 500:
        return "server_error"
    return _TYPE_BY_STATUS.get(status, "invalid_request_error")


class APIError(Exception):
    """A failure the client should see: raised anywhere under a route, rendered by `api_error_handler`."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body, also used as the payload of an SSE error event."""
        return error_body(self.message, self.type, self.param, self.code)

    def response(self, path: str = "") -> JSONResponse:
        """The JSON response; for a request to an Anthropic or Ollama route (`path`) in that API's shape."""
        if is_anthropic_path(path):
            body = anthropic_error_body(self.status, self.message)
        elif is_ollama_path(path):
            body = ollama_error_body(self.message)
        else:
            body = self.body()
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def param_path(loc: tuple[int | str, ...]) -> str | None:
    """A pydantic error location as a dotted field path (`messages.0.role`), or None for the whole body.

    Pydantic puts a union member's tag into the location (`content.str`, `stop.list[str]`,
    `messages.0.TextPart`, `stop.constrained-str`); field names are lower-case identifiers, so tags
    (holding brackets or dashes, builtin type names, capitalized class names) are dropped.
    """
    parts: list[str] = []
    for item in loc:
        if isinstance(item, str) and _is_union_tag(item):
            continue
        parts.append(str(item))
    return ".".join(parts) or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "tuple"})


def _is_union_tag(segment: str) -> bool:
    return "[" in segment or "-" in segment or segment in _TYPE_TAGS or segment[:1].isupper()


def validation_error_to_api(exc: ValidationError) -> APIError:
    """The most specific of pydantic's errors as a 400 naming the field.

    For a union that fails in every member pydantic reports one error per member; the member the
    client most likely meant is the one whose error is deepest, or else not a plain type mismatch
    (a list of parts with a bad `type`, a list of 5 stop strings, rather than "not a string").
    """
    errors = exc.errors(include_url=False)
    if not errors:
        return APIError(400, "invalid request body")
    err = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    param = param_path(err["loc"])
    return APIError(400, _message(err, param), param=param, code=_code(err))


def _message(err: ErrorDetails, param: str | None) -> str:
    if param is None:
        return f"Invalid request body: {err['msg']}."
    if err["type"] == "missing":
        return f"Missing required parameter: '{param}'."
    msg = err["msg"].removeprefix("Value error, ")
    return f"Invalid value for '{param}': {msg}."


def _code(err: ErrorDetails) -> str | None:
    if err["type"] == "missing":
        return "missing_required_parameter"
    return "invalid_value"


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response(request.url.path)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        message = f"Invalid URL ({where})"
    elif exc.status_code == 405:
        message = f"Method not allowed ({where})"
    else:
        message = str(exc.detail)
    return APIError(exc.status_code, message, headers=exc.headers).response(request.url.path)


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return validation_error_to_api(exc).response(request.url.path)


async def json_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, json.JSONDecodeError)
    error = APIError(400, f"could not parse JSON body: {exc.msg} at position {exc.pos}")
    return error.response(request.url.path)


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    """The client left (while its body was read, or before its answer was ready); nobody reads this."""
    request_id = request.scope.get("state", {}).get("request_id")
    where = f"{request.method} {request.url.path}"
    logger.info("%s (%s): client disconnected, request abandoned", where, request_id)
    return APIError(400, "client disconnected").response(request.url.path)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    """A bug: log it with its traceback and still answer in the shape (and with the request id)."""
    request_id = request.scope.get("state", {}).get("request_id")
    logger.error("unhandled error in %s %s (%s)", request.method, request.url.path, request_id, exc_info=exc)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    error = APIError(500, "internal server error; see the server log", headers=headers)
    return error.response(request.url.path)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers() -> dict[Any, Handler]:
    """Handlers for `Starlette(exception_handlers=...)`; `Exception` is the catch-all (it becomes a 500)."""
    return {
        APIError: api_error_handler,
        HTTPException: http_exception_handler,
        ValidationError: validation_error_handler,
        json.JSONDecodeError: json_error_handler,
        ClientDisconnect: client_disconnect_handler,
        Exception: unhandled_error_handler,
    }

"""Reading a request body as a JSON object, within the configured size limit, and validating it."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from starlette.requests import Request

from server.http.errors import APIError
from server.http.limits import check_body
from server.openai.schemas import RequestModel
from server.state import app_state

B = TypeVar("B", bound=RequestModel)


def request_too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body parsed as a JSON object.

    Raises `APIError` 413 past `limit` bytes (checked against Content-Length first, then while
    reading), `json.JSONDecodeError` (a 400 from its handler) for malformed JSON, and a 400 for
    non-UTF-8 text, NaN/Infinity, a body that is not an object, or one over the limits of
    `server.http.limits.check_body` (nesting depth, message count, a bad `timeout`).
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise request_too_large(limit)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise request_too_large(limit)
    try:
        body = json.loads(bytes(data), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise APIError(400, "could not parse JSON body: it is not UTF-8 text") from None
    except RecursionError:
        raise APIError(400, "could not parse JSON body: it nests too deeply") from None
    except json.JSONDecodeError:
        raise  # answered by the JSON error handler, with the position
    except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
        raise APIError(400, f"could not parse JSON body: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "could not parse JSON body: expected an object at the top level")
    check_body(request, body)
    return body


async def read_body(request: Request, schema: type[B], where: str) -> B:
    """The body (see `read_json`) validated as `schema`; its unknown fields are logged once under `where`."""
    state = app_state(request)
    body = schema.model_validate(await read_json(request, state.settings.max_body_bytes))
    state.ignored_fields.note(where, body.model_extra or {})
    return body


def _reject_constant(name: str) -> Any:
    raise APIError(400, f"could not parse JSON body: {name} is not valid JSON")

"""Reading a request body as a JSON object, within the configured size limit."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from server.errors import APIError
from server.limits import check_body


def request_too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body parsed as a JSON object.

    Raises `APIError` 413 past `limit` bytes (checked against Content-Length first, then while
    reading), `json.JSONDecodeError` (a 400 from its handler) for malformed JSON, and a 400 for
    non-UTF-8 text, NaN/Infinity, a body that is not an object, or one over the limits of
    `server.limits.check_body` (nesting depth, message count, a bad `timeout`).
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
    if not isinstance(body, dict):
        raise APIError(400, "could not parse JSON body: expected an object at the top level")
    check_body(request, body)
    return body


def _reject_constant(name: str) -> Any:
    raise APIError(400, f"could not parse JSON body: {name} is not valid JSON")

"""Limits a request body must meet before its schema sees it: nesting depth, message count, timeout.

`read_json` (server/http/body.py) calls `check_body` on every parsed body; the size limit is applied
while the body is read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from starlette.requests import Request

from server.http.context import current
from server.http.errors import APIError
from server.settings import Settings

TIMEOUT_HEADER = "x-request-timeout"


def too_deep(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` in `value` (a top-level object is depth 1).

    Iterative, so that a body nested deeper than Python's recursion limit cannot crash it.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def check_body(request: Request, body: dict[str, Any]) -> None:
    """Apply the settings' limits to a parsed body; `timeout` is taken out of it (it is not a sampling
    field) and, with the `x-request-timeout` header or the configured default, becomes the request's
    deadline. Raises `APIError` 400."""
    settings = getattr(request.app.state, "settings", None)
    if not isinstance(settings, Settings):  # an app built without settings (unit tests): the defaults
        settings = Settings(config_path=Path("models.yaml"))
    if too_deep(body, settings.max_json_depth):
        raise APIError(
            400, f"could not parse JSON body: it nests deeper than {settings.max_json_depth} levels"
        )
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > settings.max_messages:
        raise APIError(
            400,
            f"too many messages: {len(messages)}, at most {settings.max_messages} are accepted",
            param="messages",
            code="invalid_value",
        )
    timeout = request_timeout(request, body, settings.request_timeout)
    ctx = current()
    if timeout is not None and ctx is not None:
        ctx.set_timeout(timeout)


def request_timeout(request: Request, body: dict[str, Any], default: float | None) -> float | None:
    """Seconds the request may take: the body's `timeout`, else the header, else `default`."""
    header = request.headers.get(TIMEOUT_HEADER)
    value: float | None = default
    if header is not None:
        try:
            value = _positive(float(header))
        except ValueError:
            raise APIError(
                400, f"invalid {TIMEOUT_HEADER} header {header!r}: expected seconds > 0", code="invalid_value"
            ) from None
    if "timeout" in body:
        raw = body.pop("timeout")
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise APIError(
                    400, "timeout must be a number of seconds", param="timeout", code="invalid_value"
                )
            try:
                value = _positive(float(raw))
            except ValueError:
                raise APIError(
                    400, "timeout must be > 0 seconds", param="timeout", code="invalid_value"
                ) from None
    return value


def _positive(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(seconds)
    return seconds

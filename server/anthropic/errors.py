"""Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, for the Anthropic routes.

Errors are raised as `APIError` everywhere; `server.http.errors` renders them through `error_body_for`,
which picks this shape by path, so validation and its messages are shared with the OpenAI routes.
"""

from __future__ import annotations

from typing import Any

ANTHROPIC_PREFIXES = ("/anthropic/", "/v1/messages")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    """Whether a request to `path` speaks the Anthropic API (`/anthropic/...`, `/v1/messages...`)."""
    return path.startswith(ANTHROPIC_PREFIXES) or path == "/anthropic"


def anthropic_error_type(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """The body of an error response (and the payload of a stream's `error` event)."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}

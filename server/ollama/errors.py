"""Ollama's error shape, `{"error": "<message>"}`, for the `/api/*` routes.

Errors are raised as `APIError` everywhere; `server.http.errors` renders them through this shape when
the path is an Ollama one, so validation, the API key middleware and unknown routes answer in it too.
"""

from __future__ import annotations

from typing import Any

OLLAMA_PREFIX = "/api/"


def is_ollama_path(path: str) -> bool:
    """Whether a request to `path` speaks the Ollama API (`/api/...`)."""
    return path.startswith(OLLAMA_PREFIX) or path == "/api"


def ollama_error_body(message: str) -> dict[str, Any]:
    """The body of an error response, and the line a failed NDJSON stream ends with."""
    return {"error": message}

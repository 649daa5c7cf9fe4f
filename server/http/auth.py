"""Optional API keys: a pure ASGI middleware that answers 401 unless the request presents a known key.

Keys come from `$HEARTH_API_KEYS` (comma-separated) and `--api-key-file` (one a line); with none
configured the middleware is not installed. A key is presented as `Authorization: Bearer <key>`
or `x-api-key: <key>` (the Anthropic SDK's header). `/health` stays open. Keys are compared by
their SHA-256 digests with `hmac.compare_digest`, against every configured key, so the time taken
says nothing about which key was close. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.http.errors import APIError

KEYS_ENV = "HEARTH_API_KEYS"
OPEN_PATHS = frozenset({"/health"})


def keys_from_env(environ: Mapping[str, str]) -> list[str]:
    """The comma-separated keys of `$HEARTH_API_KEYS` (blanks dropped)."""
    return [key.strip() for key in environ.get(KEYS_ENV, "").split(",") if key.strip()]


def keys_from_file(path: Path) -> list[str]:
    """One key a line; blank lines and lines starting with `#` are skipped. Raises `OSError`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def presented_key(headers: Headers) -> str | None:
    """The key a request carries: the Bearer token, else `x-api-key`."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class APIKeyMiddleware:
    """Lets a request through when it presents one of `keys` (or asks for an open path)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self._digests = tuple(_digest(key) for key in keys)
        self._open = frozenset(open_paths)
        if not self._digests:
            raise ValueError("APIKeyMiddleware needs at least one key")

    def accepts(self, key: str | None) -> bool:
        """Whether `key` is configured; compares against every key, in constant time each."""
        if key is None:
            return False
        digest = _digest(key)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if self.accepts(key):
            await self.app(scope, receive, send)
            return
        response = _unauthorized(scope["path"], missing=key is None)
        await response(scope, receive, send)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _unauthorized(path: str, missing: bool) -> JSONResponse:
    if missing:
        message = "Missing API key: pass it as 'Authorization: Bearer <key>' or in the 'x-api-key' header."
    else:
        message = "Incorrect API key provided."
    error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
    return error.response(path)  # the Anthropic routes get Anthropic's error shape

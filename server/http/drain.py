"""Graceful shutdown: once draining, new requests get 503 `shutting_down` while running ones finish.

`python -m server` starts draining when uvicorn receives SIGTERM or SIGINT; uvicorn then stops
accepting connections and waits (up to `--shutdown-grace`) for open ones, and the lifespan waits
for the requests still counted here before the engines stop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from server.http.errors import APIError

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # answers for itself while draining


class Drain:
    """Whether the server is draining, and how many HTTP requests are in flight (touched on the loop)."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0

    def start(self) -> None:
        if not self.draining:
            logger.info("draining: refusing new requests, %d in flight", self.active)
        self.draining = True

    async def wait_idle(self, grace: float) -> bool:
        """Wait up to `grace` seconds for the requests in flight; whether they all finished."""
        deadline = time.monotonic() + grace
        while self.active > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.active > 0:
            logger.warning("shutdown grace of %.1fs over with %d requests in flight", grace, self.active)
        return self.active == 0


def shutting_down() -> APIError:
    return APIError(
        503, "the server is shutting down; retry later", code="shutting_down", headers={"Connection": "close"}
    )


class DrainMiddleware:
    """Counts requests in flight; answers 503 `shutting_down` to new ones while draining."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in OPEN_PATHS:
            await shutting_down().response(scope["path"])(scope, receive, send)
            return
        self.drain.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.active -= 1

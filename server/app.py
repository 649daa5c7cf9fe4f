"""The ASGI app: routes, middleware and error handlers declared as data; the models live in `lifespan`."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import ModelRegistry, load_catalog
from server.errors import REQUEST_ID_HEADER, exception_handlers
from server.routes import all_routes
from server.settings import Settings
from server.state import AppState

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestIdMiddleware:
    """Gives every HTTP request an id (`request.state.request_id`) and echoes it in `x-request-id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Load the catalog, build the registry, load the default model; shut the registry down on exit."""
    settings: Settings = app.state.settings
    catalog = load_catalog(settings.config_path)
    registry = ModelRegistry(catalog)
    try:
        default = registry.resolve(settings.default_model or catalog.default).id
        logger.info("loading default model %r from %s", default, settings.config_path)
        started = time.monotonic()
        await registry.aget(default)
        logger.info("model %r ready in %.1fs", default, time.monotonic() - started)
        app.state.hearth = AppState(
            settings=settings, registry=registry, default_model=default, started_at=int(time.time())
        )
        yield
    finally:
        registry.shutdown()


def create_app(settings: Settings) -> Starlette:
    """The Hearth ASGI app for `settings`; nothing is loaded until its lifespan starts."""
    app = Starlette(
        routes=all_routes(),
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    return app

"""The ASGI app: routes, middleware and error handlers declared as data; the models live in `lifespan`."""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import Faults, ModelRegistry, RecoveryPolicy, load_catalog
from server import ui
from server.http.auth import OPEN_PATHS, APIKeyMiddleware
from server.http.context import RequestContext, bind, unbind
from server.http.drain import Drain, DrainMiddleware
from server.http.errors import REQUEST_ID_HEADER, exception_handlers
from server.http.metrics import Metrics, MetricsMiddleware
from server.openai.responses.store import ResponseStore, StoreConfig
from server.routes import all_routes
from server.settings import Settings
from server.state import AppState

logger = logging.getLogger(__name__)


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


class RequestIdMiddleware:
    """Gives every HTTP request an id (`request.state.request_id`), echoed in `x-request-id`, and binds its
    `RequestContext` (the id in log lines, its deadline and timings) while it is served."""

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

        token = bind(RequestContext(request_id))
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            unbind(token)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Load the catalog, build the registry, load the default model; on exit let the requests in flight
    finish (up to the shutdown grace), then shut the registry down."""
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    drain: Drain = app.state.drain
    catalog = load_catalog(settings.config_path)
    if settings.dtype is not None:
        catalog = catalog.with_dtype(settings.dtype)
    policy = RecoveryPolicy(
        max_restarts=settings.engine_max_restarts,
        restart_window_s=settings.engine_restart_window,
        load_retry_s=settings.load_retry,
    )
    registry = ModelRegistry(catalog, policy=policy, faults=Faults.parse(settings.faults))
    if settings.faults:
        logger.warning("injecting faults (for tests only): %s", settings.faults)
    collector = metrics.watch(registry)
    store: ResponseStore | None = None
    try:
        store, store_problem = responses_store(settings, catalog.cache_dir)
        default = registry.resolve(settings.default_model or catalog.default).id
        logger.info("loading default model %r from %s", default, settings.config_path)
        started = time.monotonic()
        await registry.aget(default)
        load_seconds = time.monotonic() - started
        metrics.model_load.labels(default).set(load_seconds)
        logger.info("model %r ready in %.1fs", default, load_seconds)
        await registry.astart()  # the other `load: eager` models, and unloading idle ones
        app.state.hearth = AppState(
            settings=settings,
            registry=registry,
            default_model=default,
            started_at=int(time.time()),
            responses=store,
            responses_problem=store_problem,
        )
        yield
        drain.start()
        await drain.wait_idle(settings.shutdown_grace)
    finally:
        registry.shutdown()
        metrics.registry.unregister(collector)
        if store is not None:
            store.close()


def responses_store(settings: Settings, cache_dir: Path) -> tuple[ResponseStore | None, str | None]:
    """The stored responses' database (`responses.sqlite3` in the cache folder unless set), or None and
    why: the settings keep none, or the database cannot be opened (a full or read-only disk, a file in
    the way). The server serves on without storing; the error names the path."""
    if settings.responses_max_count == 0:
        return None, "this server stores no responses (--responses-max-count 0)"
    path = settings.responses_db or cache_dir / "responses.sqlite3"
    config = StoreConfig(path, settings.responses_max_count, settings.responses_max_age_days * 86400)
    try:
        return ResponseStore(config), None
    except (OSError, sqlite3.Error) as e:
        problem = f"the response store {path} cannot be opened ({type(e).__name__}: {e}); nothing is stored"
        logger.error("%s", problem)
        return None, problem


def create_app(settings: Settings) -> Starlette:
    """The Hearth ASGI app for `settings`; nothing is loaded until its lifespan starts."""
    metrics = Metrics()
    drain = Drain()
    app = Starlette(
        routes=[*all_routes(), *ui.routes],
        middleware=middleware(settings, metrics, drain),
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = drain
    return app


def middleware(settings: Settings, metrics: Metrics, drain: Drain) -> list[Middleware]:
    """Outermost first: the request id (so every response has one), metrics (so 401s and 503s count),
    CORS (so preflights need no key and errors carry CORS headers), draining, then API keys."""
    stack = [Middleware(RequestIdMiddleware), Middleware(MetricsMiddleware, metrics=metrics)]
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=[REQUEST_ID_HEADER, "retry-after"],
            )
        )
    stack.append(Middleware(DrainMiddleware, drain=drain))
    if settings.api_keys:
        open_paths = OPEN_PATHS | ui.OPEN_PATHS  # /health and the chat page (its API calls carry the key)
        stack.append(Middleware(APIKeyMiddleware, keys=settings.api_keys, open_paths=open_paths))
    return stack

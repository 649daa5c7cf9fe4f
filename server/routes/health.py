"""Liveness and engine counters: GET /health, GET /v1/stats (alias /stats)."""

from __future__ import annotations

import dataclasses

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.state import app_state


async def health(request: Request) -> Response:
    """Always cheap: answers as soon as the server is up, without touching the engine."""
    return JSONResponse({"status": "ok"})


async def stats(request: Request) -> Response:
    """Each loaded engine's `EngineStats`, keyed by model id (tests use it to prove no slot leaks)."""
    state = app_state(request)
    registry = state.registry
    body = {}
    for cfg in registry.models():
        if registry.is_loaded(cfg.id):
            engine = await registry.aget(cfg.id)
            body[cfg.id] = dataclasses.asdict(engine.stats)
    return JSONResponse(body)


routes = (
    Route("/health", health, methods=["GET"]),
    Route("/v1/stats", stats, methods=["GET"]),
    Route("/stats", stats, methods=["GET"]),
)

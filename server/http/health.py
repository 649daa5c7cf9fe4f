"""Liveness, metrics and engine counters: GET /health, GET /metrics, GET /v1/stats (alias /stats)."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from server.http.drain import Drain
from server.http.errors import error_body
from server.http.metrics import CONTENT_TYPE, Metrics
from server.state import AppState, app_state


async def health(request: Request) -> Response:
    """Cheap: no engine work. 200 `{"status": "ok"}`; 200 `{"status": "degraded", "models": {...}}` while
    a model's engine restarts or a model is unavailable (its load failed, its engine failed too often:
    the rest of the catalog serves); 503 `unhealthy` when a loaded model's engine thread died and is
    not being restarted, 503 `shutting_down` while draining."""
    drain: Drain | None = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        body = error_body("the server is shutting down", "server_error", code="shutting_down")
        return JSONResponse({"status": "shutting_down", **body}, status_code=503)
    state = getattr(request.app.state, "hearth", None)
    models = model_health(state) if isinstance(state, AppState) else {}
    dead = {model: m.get("reason") for model, m in models.items() if m["state"] == "dead"}
    if dead:
        reasons = "; ".join(f"{model}: {reason}" for model, reason in dead.items())
        body = error_body(f"engine stopped ({reasons})", "server_error", code="unhealthy")
        return JSONResponse({"status": "unhealthy", **body, "models": models}, status_code=503)
    if any(m["state"] != "ok" for m in models.values()):
        return JSONResponse({"status": "degraded", "models": models})
    return JSONResponse({"status": "ok"})


def model_health(state: AppState) -> dict[str, dict[str, Any]]:
    """Each loaded, restarting or unavailable model's state (`ModelRegistry.health`); a registry
    without one (a test's fake) reports its loaded models whose engine thread is not running."""
    registry = state.registry
    report = getattr(registry, "health", None)
    if callable(report):
        return dict(report())
    out: dict[str, dict[str, Any]] = {}
    for cfg in registry.models():
        engine = registry.peek_served(cfg.id)  # never loads, and a health check is not a use
        if engine is not None and not engine.alive:
            out[cfg.id] = {
                "state": "dead",
                "reason": engine.dead_reason or "the engine thread is not running",
            }
    return out


async def metrics(request: Request) -> Response:
    """The Prometheus text format."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE)


async def stats(request: Request) -> Response:
    """Each loaded engine's `EngineStats`, keyed by model id (tests use it to prove no slot leaks)."""
    state = app_state(request)
    registry = state.registry
    body = {}
    for cfg in registry.models():
        engine = registry.peek_served(cfg.id)
        if engine is not None:
            body[cfg.id] = dataclasses.asdict(engine.stats)
    return JSONResponse(body)


routes = (
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/v1/stats", stats, methods=["GET"]),
    Route("/stats", stats, methods=["GET"]),
)

"""The catalog in the OpenAI list shape: GET /v1/models, GET /v1/models/{id} (an alias works too)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import ModelConfig
from server.generation import resolve_model
from server.schemas import Model, ModelList
from server.state import AppState, app_state


def _model(state: AppState, cfg: ModelConfig) -> Model:
    return Model(
        id=cfg.id, created=state.started_at, owned_by=cfg.owned_by, loaded=state.registry.is_loaded(cfg.id)
    )


async def list_models(request: Request) -> Response:
    state = app_state(request)
    listing = ModelList(data=[_model(state, cfg) for cfg in state.registry.models()])
    return JSONResponse(listing.model_dump())


async def get_model(request: Request) -> Response:
    state = app_state(request)
    cfg = resolve_model(state, request.path_params["model_id"])
    return JSONResponse(_model(state, cfg).model_dump())


routes = (
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
)

"""Step 1: read and validate a generation request's body, and find the model it names.

`read_generation` is where every chat/completions route starts: the body (size, JSON, limits,
schema), its number of choices, then the catalog entry and its loaded engine (loading it if needed)."""

from __future__ import annotations

import math
from typing import TypeVar

from starlette.requests import Request

from engine import (
    Engine,
    ModelConfig,
    ModelLoadError,
    UnknownModelError,
    WrongTaskError,
)
from server.generation.params import choice_count
from server.http.body import read_body
from server.http.context import note_model
from server.http.errors import APIError, model_not_found
from server.openai.schemas import GenerationRequest
from server.state import AppState, app_state

G = TypeVar("G", bound=GenerationRequest)


async def read_generation(
    request: Request, schema: type[G], where: str
) -> tuple[G, int, ModelConfig, Engine]:
    """The body (see `read_body`), its number of choices (400 above `--max-n`, checked before a model
    loads), then the catalog entry of the model it names and that model's engine."""
    state = app_state(request)
    body = await read_body(request, schema, where)
    n = choice_count(body.n, state.settings.max_n)
    cfg, engine = await get_engine(state, body.model)
    return body, n, cfg, engine


async def get_engine(state: AppState, name: str) -> tuple[ModelConfig, Engine]:
    """The catalog entry `name` (id or alias) names and its loaded engine (loading it if needed).

    Raises 404 `model_not_found`, 400 `model_not_supported` for an embedding model, or 503
    `model_unavailable`.
    """
    cfg = resolve_model(state, name)
    try:
        engine = await state.registry.aget(cfg.id)
    except WrongTaskError:
        generators = [m.id for m in state.registry.models() if m.task == "generate"]
        message = (
            f"model '{cfg.id}' is an embedding model (task: embed); it serves /v1/embeddings, not text "
            f"generation. Models that generate: {', '.join(generators)}"
        )
        raise APIError(400, message, param="model", code="model_not_supported") from None
    except ModelLoadError as e:
        message = f"model '{cfg.id}' is unavailable: {e.message}"
        headers = {} if e.retry_in is None else {"Retry-After": str(max(1, math.ceil(e.retry_in)))}
        raise APIError(503, message, code="model_unavailable", headers=headers) from None
    note_model(cfg.id)
    return cfg, engine


def resolve_model(state: AppState, name: str) -> ModelConfig:
    """The catalog entry `name` (id or alias) names; 404 `model_not_found` when none does."""
    try:
        return state.registry.resolve(name)
    except UnknownModelError:
        raise model_not_found(name) from None

"""POST /v1/embeddings: one vector per input from a `task: embed` catalog model.

Inputs go through the model's `Embedder` (engine.embed), which batches them with other requests'
inputs. An input longer than the model's window is a 400 naming it (`input[i]`) unless the
request sets `truncate_prompt_tokens` (vLLM's field: keep the first k tokens; -1 = the window).
`dimensions` is accepted when it is the model's own size, or smaller for a model whose catalog
entry says `matryoshka: true` (then the vectors are cut and renormalized); else a 400.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import (
    Embedder,
    Embeddings,
    EmbedInputError,
    ModelConfig,
    ModelLoadError,
    WrongTaskError,
    shorten,
)
from server.generation.read import resolve_model
from server.generation.submit import generate_error, until_disconnected
from server.http.body import read_body
from server.http.context import current, note_model
from server.http.errors import APIError
from server.http.metrics import Metrics
from server.openai.embedding_schemas import EmbeddingRequest
from server.state import AppState, app_state

T = TypeVar("T")


async def embeddings(request: Request) -> Response:
    state = app_state(request)
    body = await read_body(request, EmbeddingRequest, "embeddings")
    cfg, embedder = await get_embedder(state, body.model)
    dimensions = check_dimensions(cfg, embedder, body.dimensions)
    truncate = body.truncate_prompt_tokens
    if truncate == -1:
        truncate = embedder.max_context
    try:
        result = await until_disconnected(request, within_deadline(_embed(embedder, body, truncate)))
    except EmbedInputError as e:
        raise input_error(e, body.single) from None
    except (APIError, ClientDisconnect):
        raise
    except Exception as e:  # queue full, engine stopped, a failed pass
        raise generate_error(e, "input") from None
    vectors = result.vectors
    if dimensions is not None:
        vectors = shorten(vectors, dimensions, embedder.pooling.normalize)
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.prompt_tokens.labels(cfg.id).inc(result.prompt_tokens)
    return JSONResponse(render(cfg.id, vectors.numpy(), body.encoding_format, result.prompt_tokens))


async def get_embedder(state: AppState, name: str | None) -> tuple[ModelConfig, Embedder]:
    """The `task: embed` model `name` names (none: the catalog's first) and its loaded `Embedder`.

    Raises 404 `model_not_found`, 400 for a generation model, 503 `model_unavailable`.
    """
    if name:
        cfg = resolve_model(state, name)
    else:
        found = next((m for m in state.registry.models() if m.task == "embed"), None)
        if found is None:
            raise APIError(400, "the catalog has no embedding model (task: embed)", param="model")
        cfg = found
    try:
        embedder = await state.registry.aget_embedder(cfg.id)
    except WrongTaskError:
        raise not_an_embedder(state, cfg.id) from None
    except ModelLoadError as e:
        message = f"model '{cfg.id}' could not be loaded: {e.message}"
        raise APIError(503, message, code="model_unavailable") from None
    note_model(cfg.id)
    return cfg, embedder


async def _embed(embedder: Embedder, body: EmbeddingRequest, truncate: int | None) -> Embeddings:
    ids = await asyncio.to_thread(embedder.prepare, body.inputs, truncate)
    return await embedder.embed_ids(ids)


async def within_deadline(work: Coroutine[Any, Any, T]) -> T:
    """`work`, cancelled with a 504 `request_timeout` past the request's deadline (`timeout`)."""
    ctx = current()
    remaining = None if ctx is None else ctx.remaining()
    if remaining is None:
        return await work
    try:
        return await asyncio.wait_for(work, max(remaining, 0.0))
    except asyncio.TimeoutError:
        assert ctx is not None
        raise ctx.timed_out() from None


def not_an_embedder(state: AppState, model_id: str) -> APIError:
    """400 for a generation model asked for embeddings, naming the models that embed."""
    embedders = [m.id for m in state.registry.models() if m.task == "embed"]
    message = f"model '{model_id}' is a generation model; embeddings need an embedding model (task: embed)"
    if embedders:
        message += f". Embedding models: {', '.join(embedders)}"
    return APIError(400, message, param="model", code="model_not_supported")


def check_dimensions(cfg: ModelConfig, embedder: Embedder, dimensions: int | None) -> int | None:
    """The size to cut the vectors to (None: keep them whole); 400 `dimensions` when not allowed."""
    full = embedder.dimensions
    if dimensions is None or dimensions == full:
        return None
    if not cfg.matryoshka:
        raise APIError(
            400,
            f"model '{cfg.id}' gives {full}-dimensional vectors and cannot shorten them "
            "(its catalog entry does not set matryoshka: true)",
            param="dimensions",
            code="invalid_value",
        )
    if dimensions > full:
        message = f"dimensions must be at most {full} for model '{cfg.id}'"
        raise APIError(400, message, param="dimensions", code="invalid_value")
    return dimensions


def input_error(error: EmbedInputError, single: bool) -> APIError:
    """An input the embedder refused, naming it: `input` for a single input, else `input[i]`."""
    param = "input" if error.index is None or single else f"input[{error.index}]"
    if error.field == "truncate":
        param = "truncate_prompt_tokens"
    return APIError(400, str(error), param=param, code=error.code)


def render(model: str, vectors: np.ndarray, encoding: str, prompt_tokens: int) -> dict[str, object]:
    """The `list` object of the OpenAI API; base64 is each vector's little-endian float32 bytes."""
    rows = vectors.astype("<f4", copy=False)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode() if encoding == "base64" else row.tolist(),
        }
        for i, row in enumerate(rows)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


routes = (Route("/v1/embeddings", embeddings, methods=["POST"]),)

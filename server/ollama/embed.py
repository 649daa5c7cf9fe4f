"""POST /api/embed and the older /api/embeddings, in Ollama's shapes, over one function: `embed_texts`.

`embed_texts` is the single place that reaches an embedding model (`task: embed`, engine.embed), through
the same `get_embedder` as /v1/embeddings; a generation model answers 400 `model '<name>' is not an
embedding model`, as Ollama does for a model that cannot embed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine import EmbedInputError, ModelConfig, shorten
from server.generation.submit import generate_error
from server.http.body import read_body
from server.http.errors import APIError
from server.ollama.keep_alive import apply_keep_alive, keep_alive_seconds
from server.ollama.models import resolve
from server.ollama.schemas import EmbeddingsRequest, EmbedRequest
from server.openai.embeddings import check_dimensions, get_embedder, input_error, within_deadline
from server.state import AppState, app_state


@dataclass(frozen=True)
class Embedded:
    """The vectors of the inputs, in order, and the tokens they took; `load_s`: time spent loading."""

    vectors: list[list[float]]
    prompt_tokens: int
    load_s: float = 0.0


async def embed_texts(
    state: AppState,
    cfg: ModelConfig,
    texts: list[str],
    truncate: bool,
    dimensions: int | None,
    keep_alive: float | None,
) -> Embedded:
    """Embed `texts` with the model `cfg` (truncating inputs past its window when `truncate`, else 400;
    cutting vectors to `dimensions` when given; applying `keep_alive` as the generation routes do)."""
    if cfg.task != "embed":
        raise APIError(400, f"model '{cfg.id}' is not an embedding model", param="model")
    if not texts:
        raise APIError(400, "input must not be empty", param="input")
    started = time.monotonic()
    loaded = state.registry.peek_served(cfg.id) is not None
    _, embedder = await get_embedder(state, cfg.id)
    load_s = 0.0 if loaded else time.monotonic() - started
    apply_keep_alive(state.registry, cfg.id, keep_alive)
    if dimensions is not None:
        check_dimensions(cfg, embedder, dimensions)
    try:
        ids = await asyncio.to_thread(
            embedder.prepare, list(texts), embedder.max_context if truncate else None
        )
        result = await within_deadline(embedder.embed_ids(ids))
    except EmbedInputError as e:
        raise input_error(e, len(texts) == 1) from None
    except APIError:
        raise
    except Exception as e:  # queue full, engine stopped, a failed pass
        raise generate_error(e, "input") from None
    vectors = result.vectors
    if dimensions is not None and dimensions != embedder.dimensions:
        vectors = shorten(vectors, dimensions, embedder.pooling.normalize)
    return Embedded(vectors.tolist(), result.prompt_tokens, load_s)


async def embed(request: Request) -> Response:
    started = time.monotonic()
    body = await read_body(request, EmbedRequest, "ollama.embed")
    state = app_state(request)
    cfg = resolve(state, body.model_name)
    keep = keep_alive_seconds(body.keep_alive)
    out = await embed_texts(state, cfg, body.texts, body.truncate, body.dimensions, keep)
    return JSONResponse(
        {
            "model": cfg.id,
            "embeddings": out.vectors,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "load_duration": int(out.load_s * 1e9),
            "prompt_eval_count": out.prompt_tokens,
        }
    )


async def embeddings(request: Request) -> Response:
    body = await read_body(request, EmbeddingsRequest, "ollama.embeddings")
    state = app_state(request)
    cfg = resolve(state, body.model_name)
    keep = keep_alive_seconds(body.keep_alive)
    out = await embed_texts(state, cfg, [body.prompt], True, None, keep)
    return JSONResponse({"embedding": out.vectors[0]})


routes: tuple[BaseRoute, ...] = (
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
)

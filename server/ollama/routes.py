"""POST /api/chat and /api/generate: Ollama's generation routes on the chat path; every `/api/*` route.

Validate, resolve the model (`name:latest` names `name` too), apply `keep_alive`, render the prompt,
submit, then answer as NDJSON lines (the default) or, with `stream: false`, one JSON object. A request
with no messages (chat) or an empty prompt (generate) only loads the model, or with `keep_alive: 0`
unloads it (`done_reason` "load" / "unload"), as Ollama does.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine import Engine, ModelConfig
from server.generation.collect import collect
from server.generation.read import get_engine
from server.generation.submit import first_delta, until_disconnected
from server.http.body import read_body
from server.http.context import current
from server.http.errors import APIError
from server.ollama import embed, models
from server.ollama.keep_alive import apply_keep_alive, keep_alive_seconds
from server.ollama.models import resolve
from server.ollama.schemas import ChatRequest, GenerateRequest, GenerationRequest
from server.ollama.stream import Answer, Clock, NDJSONResponse, created_at, stream_lines
from server.ollama.translate import chat_prompt, generate_prompt, sampling
from server.output.reasoning import opens_thinking
from server.state import AppState, app_state

Body = TypeVar("Body", bound=GenerationRequest)


async def chat(request: Request) -> Response:
    clock, body, state, cfg, keep = await _read(request, ChatRequest, "ollama.chat")
    if not body.messages:
        return await load_or_unload(
            state, cfg, keep, clock, {"message": {"role": "assistant", "content": ""}}
        )
    engine = await _engine(state, cfg, keep, clock)
    ids = await chat_prompt(engine, body, cfg.id)
    tools = frozenset(tool.function.name for tool in body.tools or ())
    return await answer(request, engine, ids, body, Answer(cfg.id, True, tools, False, clock))


async def generate(request: Request) -> Response:
    clock, body, state, cfg, keep = await _read(request, GenerateRequest, "ollama.generate")
    if not body.prompt and not body.images:
        return await load_or_unload(state, cfg, keep, clock, {"response": ""})
    if body.images:
        raise APIError(400, "images are not supported (no vision model)", param="images")
    engine = await _engine(state, cfg, keep, clock)
    ids = await generate_prompt(engine, body, cfg.id)
    return await answer(request, engine, ids, body, Answer(cfg.id, False, frozenset(), False, clock))


async def _read(
    request: Request, schema: type[Body], what: str
) -> tuple[Clock, Body, AppState, ModelConfig, float | None]:
    """The start both routes share: the clock, the validated body, the app state, the resolved model
    and the `keep_alive` in seconds; options Hearth does not apply are noted in the log."""
    clock = _clock()
    body = await read_body(request, schema, what)
    state = app_state(request)
    _note_options(state, body)
    return clock, body, state, resolve(state, body.model_name), keep_alive_seconds(body.keep_alive)


def _note_options(state: AppState, body: GenerationRequest) -> None:
    """Log each option Hearth does not apply (`num_gpu`, `mirostat`, ...) once."""
    if body.options is not None:
        state.ignored_fields.note("ollama.options", body.options.model_extra or {})


def _clock() -> Clock:
    ctx = current()
    return Clock(ctx.started if ctx is not None else time.monotonic())


async def _engine(state: AppState, cfg: ModelConfig, keep: float | None, clock: Clock) -> Engine:
    """The model's engine (loading it when needed, timed into `clock`), with `keep_alive` applied."""
    started = time.monotonic()
    loaded = state.registry.peek(cfg.id) is not None
    _, engine = await get_engine(state, cfg.id)
    clock.load = 0.0 if loaded else time.monotonic() - started
    apply_keep_alive(state.registry, cfg.id, keep)
    return engine


async def answer(
    request: Request, engine: Engine, ids: list[int], body: GenerationRequest, shape: Answer
) -> Response:
    """Submit the request, wait for its first delta (a failure until then is an HTTP status), then
    answer as NDJSON lines or one object."""
    params = sampling(body, ids, engine)
    shape.thinking = opens_thinking(engine.tokenizer, ids)
    shape.logprobs = params.logprobs
    shape.clock.submitted = time.monotonic()
    deltas = engine.generate(ids, params, request.state.request_id)
    first = await first_delta(request, deltas, param="messages")
    shape.clock.tick()
    if body.stream:
        return NDJSONResponse(stream_lines(first, deltas, shape))
    choices = await until_disconnected(request, collect(first, deltas, 1))
    shape.clock.last = time.monotonic()
    return JSONResponse(shape.whole(choices))


async def load_or_unload(
    state: AppState, cfg: ModelConfig, keep: float | None, clock: Clock, empty: dict[str, Any]
) -> Response:
    """Load the model (`done_reason` "load"), or with `keep_alive: 0` unload it ("unload"): at once when
    it is idle, else as soon as its requests are done."""
    if keep == 0:
        loaded = state.registry.peek(cfg.id) is not None
        if loaded and not state.registry.unload(cfg.id, "keep_alive 0"):
            apply_keep_alive(state.registry, cfg.id, 0.0)
        reason = "unload"
    else:
        await _engine(state, cfg, keep, clock)
        reason = "load"
    out = {"model": cfg.id, "created_at": created_at(), **empty, "done": True, "done_reason": reason}
    return JSONResponse(out)


routes: tuple[BaseRoute, ...] = (
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    *models.routes,
    *embed.routes,
)

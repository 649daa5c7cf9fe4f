"""Driving the engine for one HTTP request, shared by every API family (chat, completions, messages).

Model lookup and loading, the context-window check, collecting deltas, turning engine failures
into `APIError`s, and aborting the request when the client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from engine import (
    ENGINE_FAILED,
    Delta,
    Engine,
    EngineDeadError,
    FinishReason,
    Logprob,
    ModelConfig,
    ModelLoadError,
    QueueFullError,
    UnknownModelError,
    WrongTaskError,
)
from server.http.context import next_delta, note_model, observed
from server.http.errors import APIError, model_not_found
from server.openai.schemas import Usage
from server.state import AppState

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


def completion_budget(
    prompt_tokens: int, max_tokens: int | None, max_context: int, param: str, max_param: str = "max_tokens"
) -> int:
    """`max_tokens`, or what is left of the context window when None; 400 `context_length_exceeded` if
    the prompt plus the completion do not fit. `param` names the field holding the prompt (blamed when
    the prompt alone fills the window), `max_param` the field that asked for too many tokens."""
    budget = max_context - prompt_tokens if max_tokens is None else max_tokens
    if budget < 1 or prompt_tokens + budget > max_context:
        if max_tokens is None:
            detail = f"However, your prompt is {prompt_tokens} tokens, which leaves no room for a completion."
        else:
            detail = (
                f"However, you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"prompt, {max_tokens} for the completion). Reduce the length of the prompt or completion."
            )
        raise APIError(
            400,
            f"This model's maximum context length is {max_context} tokens. {detail}",
            param=param if max_tokens is None or prompt_tokens >= max_context else max_param,
            code="context_length_exceeded",
        )
    return budget


def delta_error(delta: Delta | None) -> APIError | None:
    """The error a request's last delta reports, if any (None: it finished normally)."""
    if delta is None:
        return APIError(500, "the engine ended the request without a result")
    if delta.error is not None or delta.finish_reason is FinishReason.ERROR:
        message = f"the engine failed this request: {delta.error or 'unknown error'}"
        if delta.error_code == ENGINE_FAILED:
            message += "; the model's engine is being restarted, retry the request"
        return APIError(500, message, code=delta.error_code)
    if delta.finish_reason is FinishReason.ABORT:
        return APIError(503, "the request was aborted by the server", code="shutting_down")
    if delta.finish_reason is None:
        return APIError(500, "the engine ended the request without a finish reason")
    return None


def generate_error(exc: Exception, param: str) -> APIError:
    """An exception raised by `Engine.generate` as the error the client sees."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return APIError(429, f"{exc}; retry later", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadError):
        message = f"the model's engine has stopped and is restarting: {exc}"
        return APIError(503, message, code="model_unavailable", headers={"Retry-After": "1"})
    if isinstance(exc, ValueError):  # the engine's own checks (the server checks the context first)
        return APIError(400, str(exc), param=param)
    logger.error("engine.generate raised", exc_info=exc)
    return APIError(500, f"the engine failed this request: {type(exc).__name__}: {exc}")


async def first_delta(request: Request, deltas: AsyncIterator[Delta], param: str) -> Delta:
    """Submit the request and wait for its first delta, watching the client meanwhile.

    Everything that can go wrong before the first token (queue full, engine stopped, a failed
    prefill) surfaces here, so it can still be an HTTP status rather than an error inside a
    200 stream. Raises `APIError`, or `ClientDisconnect` (the request is then aborted).
    """
    try:
        first = await until_disconnected(request, _next(deltas))
    except ClientDisconnect:
        await aclose(deltas)
        raise
    except Exception as e:
        await aclose(deltas)
        raise generate_error(e, param) from None
    error = delta_error(first) if first is None or first.finish_reason is not None else None
    if error is not None or first is None:
        raise error or APIError(500, "the engine ended the request without a result")
    return first


async def _next(deltas: AsyncIterator[Delta]) -> Delta | None:
    return await next_delta(deltas)


class Choices:
    """The n choices of one request, gathered from their deltas: text, token ids, logprob entries, last
    delta."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self.token_ids: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[Logprob]] = [[] for _ in range(n)]
        self.last: list[Delta | None] = [None] * n

    def add(self, delta: Delta) -> None:
        self._texts[delta.index].append(delta.text)
        self.token_ids[delta.index].extend(delta.token_ids)
        self.logprobs[delta.index].extend(delta.logprobs)
        self.last[delta.index] = delta

    def text(self, index: int) -> str:
        return "".join(self._texts[index])

    def finish_reason(self, index: int) -> str:
        last = self.last[index]
        assert last is not None and last.finish_reason is not None
        return last.finish_reason.value

    def usage(self) -> Usage:
        """The prompt counted once, the completion tokens of every choice summed."""
        lasts = [d for d in self.last if d is not None]
        if not lasts:
            return Usage.of(0, 0)
        first = self.last[0] or lasts[0]
        completion = sum(d.completion_tokens for d in lasts)
        return Usage.of(first.prompt_tokens, completion, first.cached_tokens)


async def checked(deltas: AsyncIterator[Delta], n: int) -> AsyncIterator[Delta]:
    """The deltas of n choices, raising the `APIError` of the first choice that failed, or of the
    request when the engine stopped before every choice finished."""
    finished: set[int] = set()
    async for delta in observed(deltas):
        if delta.finish_reason is not None:
            error = delta_error(delta)
            if error is not None:
                raise error
            finished.add(delta.index)
        yield delta
    if len(finished) < n:
        raise APIError(500, "the engine ended the request without a result")


async def collect(first: Delta, deltas: AsyncIterator[Delta], n: int) -> Choices:
    """Every choice of the request from `first` and the rest of `deltas`, which is closed however this
    ends. Raises the `APIError` of a failed choice."""
    choices = Choices(n)
    stream = chain(first, deltas)
    try:
        async for delta in checked(stream, n):
            choices.add(delta)
    finally:
        await aclose(stream)
    return choices


async def chain(first: Delta, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """`first`, then the rest of `deltas` (which ends by itself once every choice has finished).

    Closing this generator closes `deltas` (an abandoned `async for` would not).
    """
    try:
        yield first
        async for delta in deltas:
            yield delta
    finally:
        await aclose(deltas)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (aborting the engine request it drives); harmless when finished."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` while watching the connection; on disconnect cancel it and raise `ClientDisconnect`.

    The body must already have been read: the watcher consumes `receive()` messages and only
    an `http.disconnect` can follow a complete body.
    """
    task = asyncio.create_task(work)
    watcher = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watcher):
            pending.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

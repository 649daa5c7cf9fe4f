"""Step 3: submit to the engine and wait for the first delta, watching the client.

Everything that can go wrong before the first token (queue full, engine stopped, a failed
prefill) surfaces here as an HTTP status; engine failures become `APIError`s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from engine import (
    ENGINE_FAILED,
    Delta,
    EngineDeadError,
    FinishReason,
    QueueFullError,
)
from server.http.context import next_delta
from server.http.errors import APIError

logger = logging.getLogger(__name__)
T = TypeVar("T")


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


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (aborting the engine request it drives); harmless when finished."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()

"""What one HTTP request carries across layers without being passed down: its id, deadline and timings.

`RequestIdMiddleware` (server/app.py) binds a `RequestContext` for each request to a context
variable; log records read its id (`RequestIdFilter`), `server/generation/` reads its deadline
and reports every delta to it (`next_delta`, `observed`), and `MetricsMiddleware` turns its
timings into histograms when the response is done. Outside a request everything here is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from engine import Delta
from server.http.errors import APIError

_CURRENT: ContextVar[RequestContext | None] = ContextVar("hearth_request", default=None)


@dataclass
class RequestContext:
    """One HTTP request's id, deadline (monotonic seconds) and generation timings."""

    request_id: str
    started: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    timeout: float | None = None  # seconds, as asked; for the error message
    model: str | None = None
    first_token: float | None = None  # monotonic time of the first delta with tokens
    inter_token: list[float] = field(default_factory=list)  # seconds between a choice's deltas
    prompt_tokens: int = 0
    completion_tokens: dict[int, int] = field(default_factory=dict)  # per choice index
    _last: dict[int, float] = field(default_factory=dict)
    _seen: Delta | None = None

    def set_timeout(self, seconds: float) -> None:
        """End the request `seconds` after it arrived."""
        self.timeout = seconds
        self.deadline = self.started + seconds

    def remaining(self) -> float | None:
        """Seconds left before the deadline (≤ 0 once past it), None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def observe(self, delta: Delta) -> None:
        """Note a delta as the client's side sees it (the same delta twice counts once)."""
        if delta is self._seen:
            return
        self._seen = delta
        if delta.token_ids:
            now = time.monotonic()
            if self.first_token is None:
                self.first_token = now
            last = self._last.get(delta.index)
            if last is not None:
                self.inter_token.append(now - last)
            self._last[delta.index] = now
        self.prompt_tokens = delta.prompt_tokens
        self.completion_tokens[delta.index] = delta.completion_tokens

    def timed_out(self) -> APIError:
        return APIError(
            504,
            f"the request did not finish within its {self.timeout:g} s timeout; it was cancelled",
            code="request_timeout",
        )


def bind(ctx: RequestContext) -> Token[RequestContext | None]:
    return _CURRENT.set(ctx)


def unbind(token: Token[RequestContext | None]) -> None:
    _CURRENT.reset(token)


def current() -> RequestContext | None:
    """The context of the request being served, None outside one."""
    return _CURRENT.get()


def note_model(model_id: str) -> None:
    """Record which catalog model serves the current request (a metrics label)."""
    ctx = current()
    if ctx is not None:
        ctx.model = model_id


async def next_delta(deltas: AsyncIterator[Delta]) -> Delta | None:
    """The next delta (None when `deltas` is exhausted), within the current request's deadline.

    Past the deadline the pending step is cancelled, which aborts the engine request, and a
    504 `request_timeout` `APIError` is raised.
    """
    ctx = current()
    remaining = None if ctx is None else ctx.remaining()
    try:
        if remaining is None:
            delta = await deltas.__anext__()
        else:
            delta = await asyncio.wait_for(deltas.__anext__(), max(remaining, 0.0))
    except StopAsyncIteration:
        return None
    except asyncio.TimeoutError:
        assert ctx is not None
        raise ctx.timed_out() from None
    if ctx is not None:
        ctx.observe(delta)
    return delta


async def observed(deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """`deltas` through `next_delta`: timed, and cut off at the deadline. Never closes `deltas`."""
    while True:
        delta = await next_delta(deltas)
        if delta is None:
            return
        yield delta


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` attribute: the current request's id, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current()
        record.request_id = ctx.request_id if ctx is not None else "-"
        return True

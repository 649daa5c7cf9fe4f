"""Step 4: the rest of the deltas, checked, gathered into the n choices or passed on as a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine import (
    Delta,
    Logprob,
)
from server.generation.submit import aclose, delta_error
from server.http.context import observed
from server.http.errors import APIError
from server.openai.schemas import Usage


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

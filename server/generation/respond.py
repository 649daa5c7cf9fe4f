"""Step 5: answer: one JSON object, or SSE events through a `Render` that knows its API's shapes."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine import (
    Delta,
    Engine,
    SamplingParams,
)
from server.generation.collect import Choices, chain, checked, collect
from server.generation.submit import aclose, first_delta, generate_error, until_disconnected
from server.http.sse import DONE, EventStreamResponse, encode_event
from server.openai.schemas import GenerationRequest, Usage
from server.state import app_state


@dataclass(frozen=True)
class ResponseMeta:
    """What every chunk (and the non-streamed answer) of one response shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    @classmethod
    def of(cls, request: Request, make_id: Callable[[str], str], model: str) -> ResponseMeta:
        """Created now, its id made from the request's (`req_<hex>` becomes e.g. `chatcmpl-<hex>`), its
        fingerprint the loaded model's (`system_fingerprint`)."""
        request_id: str = request.state.request_id
        state = app_state(request)
        engine = state.registry.peek(model)
        fingerprint = system_fingerprint(engine) if engine is not None else state.settings.system_fingerprint
        return cls(make_id(request_id.removeprefix("req_")), int(time.time()), model, fingerprint)

    def fields(self) -> dict[str, Any]:
        """As keyword arguments of a response model."""
        return dataclasses.asdict(self)


def system_fingerprint(engine: Engine) -> str:
    """`fp_` and a short hash of what decides a model's output: its id, its revision (the checkpoint's
    commit hash when its config has one, else its source and GGUF file) and the dtype it runs in."""
    info = engine.info
    revision = info.revision or f"{info.source}:{info.gguf_file or ''}"
    return "fp_" + hashlib.sha256(f"{info.id}\n{revision}\n{info.dtype}".encode()).hexdigest()[:10]


class Render(Protocol):
    """One API's shapes for one response."""

    def opening(self, n: int) -> Iterator[bytes]:
        """The events before the first delta."""
        ...

    def events(self, delta: Delta) -> Iterator[bytes]:
        """The events of one (checked) delta."""
        ...

    def usage_event(self, usage: Usage) -> bytes: ...

    def answer(self, choices: Choices) -> BaseModel:
        """The non-streamed answer."""
        ...


async def respond(
    request: Request,
    engine: Engine,
    prompt_ids: list[int],
    params: SamplingParams,
    n: int,
    body: GenerationRequest,
    render: Render,
    param: str,
) -> Response:
    """Submit the request and wait for its first delta (a failure until then is an HTTP status), then
    answer as SSE events when `body.stream`, else as JSON. `param` names the field holding the prompt."""
    request_id: str = request.state.request_id
    deltas = engine.generate(prompt_ids, params, request_id, n)
    first = await first_delta(request, deltas, param=param)
    if body.stream:
        events = stream_events(chain(first, deltas), render, n, body.include_usage, param)
        return EventStreamResponse(events)
    choices = await until_disconnected(request, collect(first, deltas, n))
    return JSONResponse(render.answer(choices).model_dump())


async def stream_events(
    deltas: AsyncIterator[Delta], render: Render, n: int, include_usage: bool, param: str
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed answer (see "Streaming" in `docs/api.md`), then `data: [DONE]`.

    A failure after the first event becomes `data: {"error": ...}` and `data: [DONE]`. Closing
    this generator (the client left) closes `deltas`, which aborts the engine request.
    """
    try:
        for event in render.opening(n):
            yield event
        tally = Choices(n)
        try:
            async for delta in checked(deltas, n):
                tally.add(delta)
                for event in render.events(delta):
                    yield event
        except Exception as e:
            yield encode_event(generate_error(e, param=param).body())
            yield DONE
            return
        if include_usage:
            yield render.usage_event(tally.usage())
        yield DONE
    finally:
        await aclose(deltas)

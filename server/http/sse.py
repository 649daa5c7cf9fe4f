"""Server-sent events: `data: <json>` framing, and a response that closes its event source on disconnect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode_event(payload: Mapping[str, Any], event: str | None = None) -> bytes:
    """One SSE event carrying `payload` as compact JSON (non-ASCII kept as UTF-8), named `event`
    (an `event:` line, as Anthropic's streams have) when given."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    name = f"event: {event}\n" if event else ""
    return f"{name}data: {data}\n\n".encode()


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response over an async iterator of encoded events.

    However the response ends (finished, client gone, server cancelled), the iterator is closed
    with `aclose()` so that whatever it drives (an engine request) is aborted at once rather
    than when the garbage collector finds it.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(events, headers={**SSE_HEADERS, **(headers or {})})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass
        finally:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

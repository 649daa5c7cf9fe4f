"""A streamed Anthropic answer: named SSE events, each `event: <type>` plus `data: <json>`.

message_start, a ping, more pings every `PING_INTERVAL` s while the request waits for its first
token, then per content block content_block_start / content_block_delta (text_delta,
thinking_delta, input_json_delta) / content_block_stop, then message_delta (stop_reason,
stop_sequence, usage) and message_stop. A failure after message_start is an `error` event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect

from engine import Delta
from server.anthropic.errors import anthropic_error_body
from server.anthropic.schemas import tool_use_id
from server.anthropic.translate import stop_reason
from server.generation.collect import chain, checked
from server.generation.submit import aclose, generate_error
from server.http.sse import encode_event
from server.output.parser import OutputParser, Piece, PieceKind

PING_INTERVAL = 5.0


@dataclass(frozen=True)
class StreamMeta:
    """What the events of one answer share, and what the stop reason needs."""

    id: str
    model: str
    input_tokens: int
    max_tokens: int  # as asked (the engine's may be cut to the context window)
    tool_names: frozenset[str]
    thinking: bool = False  # the output starts inside `<think>` (the prompt opened it)


def event(payload: dict[str, Any]) -> bytes:
    return encode_event(payload, payload["type"])


PING = event({"type": "ping"})


class BlockEvents:
    """Turns pieces into numbered content blocks: a run of text or thinking stays one block."""

    def __init__(self) -> None:
        self._index = -1
        self._open: PieceKind | None = None
        self.tool_used = False

    def add(self, piece: Piece) -> list[bytes]:
        out = [] if piece.kind == self._open and piece.kind != "tool" else [*self.close(), self._start(piece)]
        if piece.call is not None:
            self.tool_used = True
            partial = json.dumps(piece.call.arguments, ensure_ascii=False)
            out += [self._delta({"type": "input_json_delta", "partial_json": partial}), *self.close()]
        elif piece.kind == "thinking":
            out.append(self._delta({"type": "thinking_delta", "thinking": piece.text}))
        else:
            out.append(self._delta({"type": "text_delta", "text": piece.text}))
        return out

    def close(self) -> list[bytes]:
        """Close the open block, if any."""
        if self._open is None:
            return []
        self._open = None
        return [event({"type": "content_block_stop", "index": self._index})]

    def finish(self) -> list[bytes]:
        """Close the last block; an answer without any gets one empty text block (as when not streamed)."""
        if self._index < 0:
            return [self._start(Piece("text")), *self.close()]
        return self.close()

    def _start(self, piece: Piece) -> bytes:
        self._index += 1
        self._open = piece.kind
        block: dict[str, Any]
        if piece.call is not None:
            block = {"type": "tool_use", "id": tool_use_id(), "name": piece.call.name, "input": {}}
        elif piece.kind == "thinking":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        return event({"type": "content_block_start", "index": self._index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event({"type": "content_block_delta", "index": self._index, "delta": delta})


async def message_events(
    first: asyncio.Task[Delta], deltas: AsyncIterator[Delta], meta: StreamMeta
) -> AsyncIterator[bytes]:
    """The events of one answer. `first` is the pending wait for the first delta (`first_delta`);
    closing this generator (the client left) cancels it and closes `deltas`, aborting the request."""
    stream: AsyncIterator[Delta] | None = None
    try:
        yield event(message_start(meta))
        yield PING
        while not first.done():
            await asyncio.wait({first}, timeout=PING_INTERVAL)
            if not first.done():
                yield PING
        parser, blocks = OutputParser(meta.tool_names, meta.thinking), BlockEvents()
        last: Delta | None = None
        try:
            stream = chain(first.result(), deltas)
            async for delta in checked(stream, 1):
                for piece in parser.feed(delta.text):
                    for item in blocks.add(piece):
                        yield item
                last = delta
        except ClientDisconnect:
            return
        except Exception as e:
            error = generate_error(e, param="messages")
            yield event(anthropic_error_body(error.status, error.message))
            return
        assert last is not None  # `checked` raised unless the request finished
        for item in [e for piece in parser.finish() for e in blocks.add(piece)] + blocks.finish():
            yield item
        reason = stop_reason(last, meta.max_tokens, blocks.tool_used)
        stop_sequence = last.stop_text if reason == "stop_sequence" else None
        usage = {"input_tokens": meta.input_tokens, "output_tokens": last.completion_tokens}
        delta_body = {"stop_reason": reason, "stop_sequence": stop_sequence}
        yield event({"type": "message_delta", "delta": delta_body, "usage": usage})
        yield event({"type": "message_stop"})
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        if stream is not None:
            await aclose(stream)
        await aclose(deltas)


def message_start(meta: StreamMeta) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": meta.model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": meta.input_tokens, "output_tokens": 0},
    }
    return {"type": "message_start", "message": message}

"""Output items from the model's output, and the stream's events as they are made.

`OutputItems` turns the pieces `server.output.parser` decides (text, reasoning, whole tool calls)
into output items, the same way for a streamed and a whole answer (so both agree): a run of text is
one `message` with one `output_text` part, a run of reasoning one `reasoning` item with one
`reasoning_text` part, each call one `function_call` item (only the first without parallel calls).
Each step also gives the stream's events, numbered by `sequence_number`:
`response.output_item.added`, `response.content_part.added`, `response.output_text.delta` (or
`response.reasoning_text.delta`, `response.function_call_arguments.delta`), their `.done`,
`response.content_part.done`, `response.output_item.done`. `response_events` frames them with
`response.created`, `response.in_progress` and `response.completed` (or `.incomplete`, or an
`error` event and `response.failed`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from engine import Delta
from server.generation.collect import chain, checked
from server.generation.submit import aclose, generate_error
from server.http.sse import encode_event
from server.openai.chat_render import OutputShape
from server.openai.responses.objects import (
    FunctionCallOut,
    IncompleteDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningOut,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)
from server.output.parser import OutputParser, Piece


class OutputItems:
    """The output items of one answer, built piece by piece; `add` and `finish` return the events."""

    def __init__(self, parallel: bool = True) -> None:
        self.items: list[OutputItem] = []
        self.parallel = parallel
        self.calls = 0
        self._open: OutputMessage | ReasoningOut | None = None
        self._seq = 0

    def event(self, type: str, **fields: Any) -> bytes:
        payload = {"type": type, **fields, "sequence_number": self._seq}
        self._seq += 1
        return encode_event(payload, type)

    def add(self, piece: Piece) -> list[bytes]:
        if piece.call is not None:
            if self.calls and not self.parallel:
                return []
            self.calls += 1
            out = self.close()
            arguments = json.dumps(piece.call.arguments, ensure_ascii=False)
            call = FunctionCallOut(name=piece.call.name)
            out.append(self._added(call))
            call.arguments, call.status = arguments, "completed"
            ids = {"item_id": call.id, "output_index": len(self.items) - 1}
            out.append(self.event("response.function_call_arguments.delta", **ids, delta=arguments))
            out.append(self.event("response.function_call_arguments.done", **ids, arguments=arguments))
            out.append(self._item_done(call))
            return out
        if piece.kind == "thinking":
            return self._text(ReasoningOut, piece.text, "response.reasoning_text.delta")
        return self._text(OutputMessage, piece.text, "response.output_text.delta")

    def close(self, status: str = "completed") -> list[bytes]:
        """Close the open message or reasoning item, if any."""
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = "incomplete" if status == "incomplete" else "completed"
        part = item.content[0]
        ids = {"item_id": item.id, "output_index": self.items.index(item), "content_index": 0}
        if isinstance(item, OutputMessage):
            done = self.event("response.output_text.done", **ids, text=part.text, logprobs=[])
        else:
            done = self.event("response.reasoning_text.done", **ids, text=part.text)
        part_done = self.event("response.content_part.done", **ids, part=part.model_dump())
        return [done, part_done, self._item_done(item)]

    def _text(
        self, kind: type[OutputMessage] | type[ReasoningOut], text: str, delta_type: str
    ) -> list[bytes]:
        out: list[bytes] = []
        item = self._open
        if not isinstance(item, kind):
            out += self.close()
            item = kind()
            out.append(self._added(item))
            part: OutputText | ReasoningText = OutputText() if kind is OutputMessage else ReasoningText()
            item.content.append(part)  # type: ignore[arg-type]
            ids = {"item_id": item.id, "output_index": len(self.items) - 1, "content_index": 0}
            out.append(self.event("response.content_part.added", **ids, part=part.model_dump()))
            self._open = item
        item.content[0].text += text
        ids = {"item_id": item.id, "output_index": self.items.index(item), "content_index": 0}
        extra: dict[str, Any] = {"logprobs": []} if kind is OutputMessage else {}
        out.append(self.event(delta_type, **ids, delta=text, **extra))
        return out

    def _added(self, item: OutputItem) -> bytes:
        self.items.append(item)
        index = len(self.items) - 1
        return self.event("response.output_item.added", output_index=index, item=item.model_dump())

    def _item_done(self, item: OutputItem) -> bytes:
        index = self.items.index(item)
        return self.event("response.output_item.done", output_index=index, item=item.model_dump())


def finished(
    response: ResponseObject,
    items: OutputItems,
    last: Delta,
    token_ids: list[int],
    text: str,
    shape: OutputShape,
) -> ResponseObject:
    """`response` once its output is done: its items, status (`incomplete` when `max_output_tokens`
    cut it), usage."""
    cut = last.finish_reason is not None and last.finish_reason.value == "length"
    reasoning = shape.reasoning_tokens(token_ids, text)
    usage = ResponseUsage.of(last.prompt_tokens, last.completion_tokens, last.cached_tokens, reasoning)
    return response.model_copy(
        update={
            "output": list(items.items),
            "status": "incomplete" if cut else "completed",
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
            "completed_at": None if cut else int(time.time()),
            "usage": usage,
        }
    )


def whole_answer(
    response: ResponseObject, text: str, last: Delta, token_ids: list[int], shape: OutputShape
) -> ResponseObject:
    """The non-streamed answer: the whole output through `OutputItems`."""
    parser = OutputParser(shape.tool_names, shape.thinking)
    items = OutputItems(shape.parallel)
    cut = last.finish_reason is not None and last.finish_reason.value == "length"
    for piece in [*parser.feed(text), *parser.finish()]:
        items.add(piece)
    items.close("incomplete" if cut else "completed")
    return finished(response, items, last, token_ids, text, shape)


async def response_events(
    first: Delta,
    deltas: AsyncIterator[Delta],
    response: ResponseObject,
    shape: OutputShape,
    on_done: Callable[[ResponseObject], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The events of one streamed answer; `on_done` gets the final response (to store it). Closing
    this generator (the client left) closes `deltas`, which aborts the engine request."""
    items = OutputItems(shape.parallel)
    stream = chain(first, deltas)
    try:
        yield items.event("response.created", response=response.model_dump())
        yield items.event("response.in_progress", response=response.model_dump())
        parser = OutputParser(shape.tool_names, shape.thinking)
        texts: list[str] = []
        token_ids: list[int] = []
        last = first
        try:
            async for delta in checked(stream, 1):
                texts.append(delta.text)
                token_ids.extend(delta.token_ids)
                last = delta
                for piece in parser.feed(delta.text):
                    for event in items.add(piece):
                        yield event
        except Exception as e:
            error = generate_error(e, param="input")
            yield items.event(
                "error", code=error.code or error.type, message=error.message, param=error.param
            )
            failed = response.model_copy(
                update={
                    "status": "failed",
                    "error": ResponseError(code="server_error", message=error.message),
                }
            )
            yield items.event("response.failed", response=failed.model_dump())
            return
        for piece in parser.finish():
            for event in items.add(piece):
                yield event
        cut = last.finish_reason is not None and last.finish_reason.value == "length"
        for event in items.close("incomplete" if cut else "completed"):
            yield event
        final = finished(response, items, last, token_ids, "".join(texts), shape)
        await on_done(final)
        kind = "response.incomplete" if final.status == "incomplete" else "response.completed"
        yield items.event(kind, response=final.model_dump())
    finally:
        await aclose(stream)

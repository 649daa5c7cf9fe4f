"""Ollama's answers: NDJSON lines while streaming (one JSON object a line, `done: false`), then the
final object with `done: true`, `done_reason` and the counts and timings (nanoseconds).

The model's output goes through an `OutputParser` (the same for streamed and whole answers): its
reasoning becomes `thinking`, its calls `tool_calls` (Ollama's shape: `arguments` as an object), the
rest `content` (chat) or `response` (generate). A failure once the stream began is a last line
`{"error": "..."}`, as Ollama sends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from engine import Delta, FinishReason, Logprob
from server.generation.collect import Choices, chain, checked
from server.generation.submit import aclose, generate_error
from server.http.sse import EventStreamResponse
from server.ollama.errors import ollama_error_body
from server.output.parser import OutputParser, Piece, parse_output


class NDJSONResponse(EventStreamResponse):
    """An `application/x-ndjson` stream, closed (aborting its engine request) however it ends."""

    media_type = "application/x-ndjson"


def line(payload: Mapping[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def created_at() -> str:
    """Now, as Ollama writes `created_at` (RFC 3339, UTC)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Clock:
    """When a request started, how long its model took to load, and when it was submitted, saw its first
    delta and its last (monotonic seconds)."""

    started: float
    load: float = 0.0
    submitted: float = 0.0
    first: float | None = None
    last: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last = now

    def durations(self) -> dict[str, int]:
        end = time.monotonic()
        first = self.first or end
        return {
            "total_duration": _ns(end - self.started),
            "load_duration": _ns(self.load),
            "prompt_eval_duration": _ns(first - self.submitted),
            "eval_duration": _ns((self.last or first) - first),
        }


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass
class Answer:
    """One answer's shapes: `chat` (a `message`) or generate (a `response`)."""

    model: str
    chat: bool
    tool_names: frozenset[str]
    thinking: bool  # the output starts inside `<think>`
    clock: Clock
    logprobs: bool = False
    _parser: OutputParser | None = None
    _calls: int = 0

    def chunk(
        self, pieces: list[Piece], logprobs: tuple[Logprob, ...] = (), done: bool = False
    ) -> dict[str, Any]:
        """The object for `pieces` (a whole answer, or one delta's)."""
        text = "".join(p.text for p in pieces if p.kind == "text")
        thinking = "".join(p.text for p in pieces if p.kind == "thinking")
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            calls = [self._call(p) for p in pieces if p.call is not None]
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        if self.logprobs and logprobs:
            out["logprobs"] = [logprob_entry(lp) for lp in logprobs]
        out["done"] = done
        return out

    def _call(self, piece: Piece) -> dict[str, Any]:
        assert piece.call is not None
        index, self._calls = self._calls, self._calls + 1
        return {"function": {"index": index, "name": piece.call.name, "arguments": piece.call.arguments}}

    def final(self, out: dict[str, Any], last: Delta) -> dict[str, Any]:
        """`out` as the last object: `done`, `done_reason`, the counts and the timings."""
        reason = "length" if last.finish_reason is FinishReason.LENGTH else "stop"
        counts = {"prompt_eval_count": last.prompt_tokens, "eval_count": last.completion_tokens}
        return {**out, "done": True, "done_reason": reason, **self.clock.durations(), **counts}

    def whole(self, choices: Choices) -> dict[str, Any]:
        """The non-streamed answer."""
        last = choices.last[0]
        assert last is not None
        pieces = parse_output(choices.text(0), self.tool_names, self.thinking)
        return self.final(self.chunk(pieces, tuple(choices.logprobs[0])), last)

    def lines(self, delta: Delta) -> list[bytes]:
        """The lines of one streamed delta: its pieces (if any), and the final object after the last."""
        if self._parser is None:
            self._parser = OutputParser(self.tool_names, self.thinking)
        pieces = self._parser.feed(delta.text)
        if delta.finish_reason is not None:
            pieces += self._parser.finish()
        out = (
            [line(self.chunk(pieces, delta.logprobs))] if pieces or (self.logprobs and delta.logprobs) else []
        )
        if delta.finish_reason is not None:
            out.append(line(self.final(self.chunk([]), delta)))
        return out


def logprob_entry(lp: Logprob) -> dict[str, Any]:
    """One token's logprob in Ollama's shape (`token`, `logprob`, `bytes`, `top_logprobs`)."""
    top = [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top]
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes), "top_logprobs": top}


async def stream_lines(first: Delta, deltas: AsyncIterator[Delta], answer: Answer) -> AsyncIterator[bytes]:
    """The NDJSON lines of one streamed answer. Closing this generator (the client left) closes `deltas`,
    which aborts the engine request."""
    stream = chain(first, deltas)
    try:
        try:
            async for delta in checked(stream, 1):
                answer.clock.tick()
                for item in answer.lines(delta):
                    yield item
        except Exception as e:
            yield line(ollama_error_body(generate_error(e, param="messages").message))
    finally:
        await aclose(stream)

"""The `chat.completion` answer and `chat.completion.chunk` events of one response.

Each choice's output goes through an `OutputParser` (the same for streamed and whole answers, so
both agree): its reasoning becomes `reasoning_content`, its tool calls `tool_calls` (in a stream a
call arrives as one `delta.tool_calls` entry with `index`, `id` and `function.name`, then one with
the `function.arguments`), the rest `content`. An answer with calls ends with `finish_reason:
"tool_calls"`; without parallel calls only the first call is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine import Delta
from server.generation.collect import Choices
from server.generation.respond import ResponseMeta
from server.http.sse import encode_event
from server.openai.logprobs import chat_logprobs
from server.openai.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
)
from server.output.parser import OutputParser, Piece, parse_output
from server.output.reasoning import reasoning_tokens
from server.output.tool_schemas import call_id, tool_call


@dataclass(frozen=True)
class OutputShape:
    """How to read the model's output: the callable tools, whether several calls may come back,
    whether the output starts inside `<think>`; the tokenizer counts reasoning tokens."""

    tokenizer: Any
    tool_names: frozenset[str] = frozenset()
    parallel: bool = True
    thinking: bool = False

    def reasoning_tokens(self, token_ids: list[int], text: str) -> int:
        return reasoning_tokens(self.tokenizer, token_ids, text, self.thinking)


@dataclass
class _ChoiceState:
    parser: OutputParser
    calls: int = 0
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)


class ChatRender:
    def __init__(self, meta: ResponseMeta, logprobs: bool, shape: OutputShape) -> None:
        self.meta = meta
        self.logprobs = logprobs
        self.shape = shape
        self._choices: dict[int, _ChoiceState] = {}

    def opening(self, n: int) -> Iterator[bytes]:
        for i in range(n):
            yield self.chunk(DeltaMessage(role="assistant", content=""), index=i)

    def events(self, delta: Delta) -> Iterator[bytes]:
        state = self._state(delta.index)
        state.text.append(delta.text)
        state.token_ids.extend(delta.token_ids)
        pieces = state.parser.feed(delta.text)
        if delta.finish_reason is not None:
            pieces += state.parser.finish()
        messages = self._messages(state, pieces)
        lp = chat_logprobs(delta.logprobs) if self.logprobs and delta.logprobs else None
        if lp is not None and not messages:
            messages = [DeltaMessage(content="")]
        for i, message in enumerate(messages):
            yield self.chunk(message, index=delta.index, logprobs=lp if i == 0 else None)
        if delta.finish_reason is not None:
            reason = _finish_reason(delta.finish_reason.value, state.calls)
            yield self.chunk(DeltaMessage(), reason, index=delta.index)

    def usage_event(self, usage: Usage) -> bytes:
        usage.completion_tokens_details.reasoning_tokens = sum(
            self.shape.reasoning_tokens(s.token_ids, "".join(s.text)) for s in self._choices.values()
        )
        return encode_event(ChatCompletionChunk(**self.meta.fields(), choices=[], usage=usage).model_dump())

    def chunk(
        self,
        delta: DeltaMessage,
        finish_reason: str | None = None,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        choice = ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
        return encode_event(ChatCompletionChunk(**self.meta.fields(), choices=[choice]).model_dump())

    def answer(self, choices: Choices) -> ChatCompletion:
        usage = choices.usage()
        usage.completion_tokens_details.reasoning_tokens = sum(
            self.shape.reasoning_tokens(choices.token_ids[i], choices.text(i)) for i in range(choices.n)
        )
        return ChatCompletion(
            **self.meta.fields(),
            choices=[self._choice(choices, i) for i in range(choices.n)],
            usage=usage,
        )

    def _choice(self, choices: Choices, i: int) -> Choice:
        pieces = parse_output(choices.text(i), self.shape.tool_names, self.shape.thinking)
        text = "".join(p.text for p in pieces if p.kind == "text")
        reasoning = "".join(p.text for p in pieces if p.kind == "thinking") or None
        calls = [tool_call(p.call) for p in pieces if p.call is not None]
        if not self.shape.parallel:
            calls = calls[:1]
        message = ResponseMessage(
            content=text if text or not calls else None,
            reasoning_content=reasoning,
            reasoning=reasoning,
            tool_calls=calls or None,
        )
        return Choice(
            index=i,
            message=message,
            logprobs=chat_logprobs(choices.logprobs[i]) if self.logprobs else None,
            finish_reason=_finish_reason(choices.finish_reason(i), len(calls)),
        )

    def _state(self, index: int) -> _ChoiceState:
        if index not in self._choices:
            parser = OutputParser(self.shape.tool_names, self.shape.thinking)
            self._choices[index] = _ChoiceState(parser)
        return self._choices[index]

    def _messages(self, state: _ChoiceState, pieces: list[Piece]) -> list[DeltaMessage]:
        """The delta messages of decided pieces: a run of text or reasoning is one message, a call two
        (its name, then its arguments)."""
        out: list[DeltaMessage] = []
        for piece in pieces:
            if piece.call is not None:
                if state.calls and not self.shape.parallel:
                    continue
                k, state.calls = state.calls, state.calls + 1
                head = {"index": k, "id": call_id(), "type": "function"}
                entry = tool_call(piece.call)
                name = {"name": piece.call.name, "arguments": ""}
                out.append(DeltaMessage(tool_calls=[{**head, "function": name}]))
                arguments = {"arguments": entry["function"]["arguments"]}
                out.append(DeltaMessage(tool_calls=[{"index": k, "function": arguments}]))
            elif piece.kind == "thinking":
                last = out[-1] if out else None
                if last is not None and last.reasoning_content is not None:
                    last.reasoning_content += piece.text
                    last.reasoning = last.reasoning_content
                else:
                    out.append(DeltaMessage(reasoning_content=piece.text, reasoning=piece.text))
            else:
                last = out[-1] if out else None
                if last is not None and last.content is not None:
                    last.content += piece.text
                else:
                    out.append(DeltaMessage(content=piece.text))
        return out


def _finish_reason(reason: str, calls: int) -> str:
    return "tool_calls" if calls and reason == "stop" else reason

"""POST /v1/chat/completions: validate, render the prompt, then answer as JSON or as SSE chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import ChatTemplateError, Delta, render_chat
from server.errors import APIError
from server.generation import Choices, completion_budget
from server.logprobs import chat_logprobs
from server.respond import ResponseMeta, read_generation, respond
from server.sampling import sampling_params
from server.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
    completion_id,
)
from server.sse import encode_event


async def chat_completions(request: Request) -> Response:
    body, n, cfg, engine = await read_generation(request, ChatCompletionRequest, "chat.completions")
    messages = [message.to_template() for message in body.messages]
    try:
        prompt_ids = await asyncio.to_thread(render_chat, engine.tokenizer, messages)
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = completion_budget(
        len(prompt_ids), body.max_new_tokens, engine.max_context, param="messages", max_param=max_param
    )
    params = sampling_params(body, max_tokens, engine.vocab_size, bool(body.logprobs), body.top_logprobs or 0)
    meta = ResponseMeta.of(request, completion_id, cfg.id)
    render = ChatRender(meta, params.logprobs)
    return await respond(request, engine, prompt_ids, params, n, body, render, param="messages")


@dataclass(frozen=True)
class ChatRender:
    """The `chat.completion` answer and the `chat.completion.chunk` events of one response: per choice
    a role chunk, content chunks (with their tokens' logprobs when asked), a finish chunk."""

    meta: ResponseMeta
    logprobs: bool

    def opening(self, n: int) -> Iterator[bytes]:
        for i in range(n):
            yield self.chunk(DeltaMessage(role="assistant", content=""), index=i)

    def events(self, delta: Delta) -> Iterator[bytes]:
        if delta.text or (self.logprobs and delta.logprobs):
            lp = chat_logprobs(delta.logprobs) if self.logprobs else None
            yield self.chunk(DeltaMessage(content=delta.text), index=delta.index, logprobs=lp)
        if delta.finish_reason is not None:
            yield self.chunk(DeltaMessage(), delta.finish_reason.value, index=delta.index)

    def usage_event(self, usage: Usage) -> bytes:
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
        return ChatCompletion(
            **self.meta.fields(),
            choices=[
                Choice(
                    index=i,
                    message=ResponseMessage(content=choices.text(i)),
                    logprobs=chat_logprobs(choices.logprobs[i]) if self.logprobs else None,
                    finish_reason=choices.finish_reason(i),
                )
                for i in range(choices.n)
            ],
            usage=choices.usage(),
        )


routes = (Route("/v1/chat/completions", chat_completions, methods=["POST"]),)

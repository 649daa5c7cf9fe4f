"""POST /v1/chat/completions: validate, render the prompt, then answer as JSON or as SSE chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import ChatTemplateError, Delta, render_chat
from server.body import read_json
from server.errors import APIError
from server.generation import (
    Choices,
    ResponseMeta,
    aclose,
    chain,
    checked,
    collect,
    completion_budget,
    first_delta,
    generate_error,
    get_engine,
    until_disconnected,
)
from server.logprobs import chat_logprobs
from server.sampling import choice_count, sampling_params
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
from server.sse import DONE, EventStreamResponse, encode_event
from server.state import app_state


async def chat_completions(request: Request) -> Response:
    state = app_state(request)
    settings = state.settings
    body = ChatCompletionRequest.model_validate(await read_json(request, settings.max_body_bytes))
    state.ignored_fields.note("chat.completions", body.model_extra or {})
    n = choice_count(body.n, settings.max_n)
    cfg, engine = await get_engine(state, body.model)

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

    request_id: str = request.state.request_id
    meta = ChunkMeta(
        id=completion_id(request_id.removeprefix("req_")),
        created=int(time.time()),
        model=cfg.id,
        system_fingerprint=settings.system_fingerprint,
    )
    deltas = engine.generate(prompt_ids, params, request_id, n)
    first = await first_delta(request, deltas, param="messages")
    if body.stream:
        events = stream_chunks(chain(first, deltas), meta, n, body.include_usage, params.logprobs)
        return EventStreamResponse(events)
    choices = await until_disconnected(request, collect(first, deltas, n))
    return JSONResponse(completion(choices, meta, params.logprobs).model_dump())


class ChunkMeta(ResponseMeta):
    """Builds the chat chunks of one response."""

    def chunk(
        self,
        delta: DeltaMessage,
        finish_reason: str | None = None,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        choice = ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
        return encode_event(self._chunk([choice], usage=None).model_dump())

    def usage_chunk(self, usage: Usage) -> bytes:
        return encode_event(self._chunk([], usage=usage).model_dump())

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=self.system_fingerprint,
            choices=choices,
            usage=usage,
        )


def completion(choices: Choices, meta: ChunkMeta, logprobs: bool) -> ChatCompletion:
    """The non-streamed answer."""
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=meta.system_fingerprint,
        choices=[
            Choice(
                index=i,
                message=ResponseMessage(content=choices.text(i)),
                logprobs=chat_logprobs(choices.logprobs[i]) if logprobs else None,
                finish_reason=choices.finish_reason(i),
            )
            for i in range(choices.n)
        ],
        usage=choices.usage(),
    )


async def stream_chunks(
    deltas: AsyncIterator[Delta], meta: ChunkMeta, n: int, include_usage: bool, logprobs: bool
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed answer (see "Streaming" in `api.md`): per choice a role chunk,
    content chunks (with their tokens' logprobs when asked), a finish chunk.

    A failure after the first event becomes `data: {"error": ...}` and `data: [DONE]`. Closing
    this generator (the client left) closes `deltas`, which aborts the engine request.
    """
    try:
        for i in range(n):
            yield meta.chunk(DeltaMessage(role="assistant", content=""), index=i)
        tally = Choices(n)
        try:
            async for delta in checked(deltas, n):
                tally.add(delta)
                if delta.text or (logprobs and delta.logprobs):
                    lp = chat_logprobs(delta.logprobs) if logprobs else None
                    yield meta.chunk(DeltaMessage(content=delta.text), index=delta.index, logprobs=lp)
                if delta.finish_reason is not None:
                    yield meta.chunk(DeltaMessage(), delta.finish_reason.value, index=delta.index)
        except Exception as e:
            yield encode_event(generate_error(e, param="messages").body())
            yield DONE
            return
        if include_usage:
            yield meta.usage_chunk(tally.usage())
        yield DONE
    finally:
        await aclose(deltas)


routes = (Route("/v1/chat/completions", chat_completions, methods=["POST"]),)

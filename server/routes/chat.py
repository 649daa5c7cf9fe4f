"""POST /v1/chat/completions: validate, render the prompt, then answer as JSON or as SSE chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import ChatTemplateError, Delta, SamplingParams, render_chat
from server.body import read_json
from server.errors import APIError
from server.generation import (
    Collected,
    aclose,
    chain,
    collect,
    completion_budget,
    delta_error,
    first_delta,
    generate_error,
    get_engine,
    until_disconnected,
)
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
    if (body.n or 1) > settings.max_n:
        raise APIError(400, f"n must be at most {settings.max_n} on this server", param="n")
    cfg, engine = await get_engine(state, body.model)

    messages = [message.to_template() for message in body.messages]
    try:
        prompt_ids = await asyncio.to_thread(render_chat, engine.tokenizer, messages)
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None
    params = sampling_params(body, len(prompt_ids), engine.max_context)

    request_id: str = request.state.request_id
    meta = ChunkMeta(
        id=completion_id(request_id.removeprefix("req_")),
        created=int(time.time()),
        model=cfg.id,
        system_fingerprint=settings.system_fingerprint,
    )
    deltas = engine.generate(prompt_ids, params, request_id)
    first = await first_delta(request, deltas, param="messages")
    if body.stream:
        return EventStreamResponse(stream_chunks(chain(first, deltas), meta, body.include_usage))
    result = await until_disconnected(request, collect(first, deltas))
    return JSONResponse(completion(result, meta).model_dump())


def sampling_params(body: ChatCompletionRequest, prompt_tokens: int, max_context: int) -> SamplingParams:
    """The engine's settings for this request (OpenAI defaults: temperature 1, top_p 1)."""
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = completion_budget(
        prompt_tokens, body.max_new_tokens, max_context, param="messages", max_param=max_param
    )
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        max_tokens=max_tokens,
        stop=body.stop_strings,
        seed=body.seed,
    )


@dataclass(frozen=True)
class ChunkMeta:
    """What every chunk (and the non-streamed completion) of one response shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str

    def chunk(self, delta: DeltaMessage, finish_reason: str | None = None) -> bytes:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)
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


def usage_of(last: Delta) -> Usage:
    return Usage.of(last.prompt_tokens, last.completion_tokens, last.cached_tokens)


def completion(result: Collected, meta: ChunkMeta) -> ChatCompletion:
    """The non-streamed answer, or the `APIError` its last delta reports."""
    error = delta_error(result.last)
    if error is not None:
        raise error
    assert result.last.finish_reason is not None
    return ChatCompletion(
        id=meta.id,
        created=meta.created,
        model=meta.model,
        system_fingerprint=meta.system_fingerprint,
        choices=[
            Choice(
                index=0,
                message=ResponseMessage(content=result.text),
                finish_reason=result.last.finish_reason.value,
            )
        ],
        usage=usage_of(result.last),
    )


async def stream_chunks(
    deltas: AsyncIterator[Delta], meta: ChunkMeta, include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed answer (see "Streaming" in `api.md`).

    A failure after the first event becomes `data: {"error": ...}` and `data: [DONE]`. Closing
    this generator (the client left) closes `deltas`, which aborts the engine request.
    """
    try:
        yield meta.chunk(DeltaMessage(role="assistant", content=""))
        last: Delta | None = None
        error: APIError | None
        try:
            async for delta in deltas:
                last = delta
                if delta.text:
                    yield meta.chunk(DeltaMessage(content=delta.text))
        except Exception as e:
            error = generate_error(e, param="messages")
        else:
            error = delta_error(last)
        if error is not None:
            yield encode_event(error.body())
            yield DONE
            return
        assert last is not None and last.finish_reason is not None
        yield meta.chunk(DeltaMessage(), finish_reason=last.finish_reason.value)
        if include_usage:
            yield meta.usage_chunk(usage_of(last))
        yield DONE
    finally:
        await aclose(deltas)


routes = (Route("/v1/chat/completions", chat_completions, methods=["POST"]),)

"""POST /v1/completions (legacy): a raw prompt, no chat template; JSON or SSE `text_completion` chunks.

The prompt is tokenized with the tokenizer's default special tokens. `echo` prepends the prompt
text to each choice; `logprobs` (0..5) covers the generated tokens only (no prompt logprobs),
with `text_offset` counted from the start of the returned text, echo included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import Delta, Engine
from server.body import read_json
from server.completion_schemas import Completion, CompletionChoice, CompletionRequest, text_completion_id
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
from server.logprobs import completion_logprobs
from server.sampling import choice_count, sampling_params
from server.schemas import Usage
from server.sse import DONE, EventStreamResponse, encode_event
from server.state import app_state


async def completions(request: Request) -> Response:
    state = app_state(request)
    settings = state.settings
    body = CompletionRequest.model_validate(await read_json(request, settings.max_body_bytes))
    state.ignored_fields.note("completions", body.model_extra or {})
    n = choice_count(body.n, settings.max_n)
    cfg, engine = await get_engine(state, body.model)

    prompt_ids, prompt_text = await asyncio.to_thread(tokenize_prompt, engine, body.prompt_value)
    max_tokens = completion_budget(len(prompt_ids), body.max_new_tokens, engine.max_context, param="prompt")
    logprobs = body.logprobs is not None
    params = sampling_params(body, max_tokens, engine.vocab_size, logprobs, body.logprobs or 0)

    request_id: str = request.state.request_id
    meta = ChunkMeta(
        id=text_completion_id(request_id.removeprefix("req_")),
        created=int(time.time()),
        model=cfg.id,
        system_fingerprint=settings.system_fingerprint,
    )
    echo = prompt_text if body.echo else ""
    deltas = engine.generate(prompt_ids, params, request_id, n)
    first = await first_delta(request, deltas, param="prompt")
    if body.stream:
        events = stream_chunks(chain(first, deltas), meta, n, echo, body.include_usage, logprobs)
        return EventStreamResponse(events)
    choices = await until_disconnected(request, collect(first, deltas, n))
    return JSONResponse(completion(choices, meta, echo, logprobs).model_dump())


def tokenize_prompt(engine: Engine, prompt: str | list[int]) -> tuple[list[int], str]:
    """(token ids, prompt text). Ids past the vocabulary: 400 `prompt`; an empty prompt becomes the
    tokenizer's BOS token where it has one (as OpenAI's becomes `<|endoftext|>`)."""
    tokenizer = engine.tokenizer
    if isinstance(prompt, str):
        ids = [int(t) for t in tokenizer(prompt)["input_ids"]]
        text = prompt
    else:
        if any(t >= engine.vocab_size for t in prompt):
            raise APIError(400, f"prompt token ids must be below {engine.vocab_size}", param="prompt")
        ids = list(prompt)
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if not ids:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise APIError(400, "the prompt is empty", param="prompt")
        ids = [int(bos)]
    return ids, text


class ChunkMeta(ResponseMeta):
    """Builds the `text_completion` objects of one response (the answer and each chunk share a shape)."""

    def build(self, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            system_fingerprint=self.system_fingerprint,
            choices=choices,
            usage=usage,
        )

    def chunk(self, choice: CompletionChoice) -> bytes:
        return encode_event(self.build([choice], usage=None).model_dump())


def completion(choices: Choices, meta: ChunkMeta, echo: str, logprobs: bool) -> Completion:
    """The non-streamed answer."""
    out = []
    for i in range(choices.n):
        lp = completion_logprobs(choices.logprobs[i], len(echo)) if logprobs else None
        text = echo + choices.text(i)
        out.append(CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=choices.finish_reason(i)))
    return meta.build(out, choices.usage())


async def stream_chunks(
    deltas: AsyncIterator[Delta], meta: ChunkMeta, n: int, echo: str, include_usage: bool, logprobs: bool
) -> AsyncIterator[bytes]:
    """The SSE events of one streamed answer: per choice its text pieces (the echoed prompt first), then a
    chunk with its `finish_reason`; errors after the start as `data: {"error": ...}`."""
    try:
        if echo:
            for i in range(n):
                yield meta.chunk(CompletionChoice(index=i, text=echo))
        offsets = [len(echo)] * n
        tally = Choices(n)
        try:
            async for delta in checked(deltas, n):
                tally.add(delta)
                i = delta.index
                if delta.text or (logprobs and delta.logprobs):
                    lp: dict[str, Any] | None = None
                    if logprobs:
                        lp = completion_logprobs(delta.logprobs, offsets[i])
                        offsets[i] += sum(len(e.token) for e in delta.logprobs)
                    yield meta.chunk(CompletionChoice(index=i, text=delta.text, logprobs=lp))
                if delta.finish_reason is not None:
                    finish = delta.finish_reason.value
                    yield meta.chunk(CompletionChoice(index=i, text="", finish_reason=finish))
        except Exception as e:
            yield encode_event(generate_error(e, param="prompt").body())
            yield DONE
            return
        if include_usage:
            yield encode_event(meta.build([], tally.usage()).model_dump())
        yield DONE
    finally:
        await aclose(deltas)


routes = (Route("/v1/completions", completions, methods=["POST"]),)

"""POST /v1/completions (legacy): a raw prompt, no chat template; JSON or SSE `text_completion` chunks.

The prompt is tokenized with the tokenizer's default special tokens. `echo` prepends the prompt
text to each choice; `logprobs` (0..5) covers the generated tokens only (no prompt logprobs),
with `text_offset` counted from the start of the returned text, echo included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import Delta, Engine
from server.generation.collect import Choices
from server.generation.params import completion_budget
from server.generation.read import read_generation
from server.generation.respond import ResponseMeta, respond
from server.http.errors import APIError
from server.http.sse import encode_event
from server.openai.completion_schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    text_completion_id,
)
from server.openai.logprobs import completion_logprobs
from server.openai.sampling_params import sampling_params
from server.openai.schemas import Usage


async def completions(request: Request) -> Response:
    body, n, cfg, engine = await read_generation(request, CompletionRequest, "completions")
    prompt_ids, prompt_text = await asyncio.to_thread(tokenize_prompt, engine, body.prompt_value)
    max_tokens = completion_budget(len(prompt_ids), body.max_new_tokens, engine.max_context, param="prompt")
    logprobs = body.logprobs is not None
    params = sampling_params(body, max_tokens, engine, logprobs, body.logprobs or 0)
    meta = ResponseMeta.of(request, text_completion_id, cfg.id)
    render = CompletionRender(meta, prompt_text if body.echo else "", logprobs)
    return await respond(request, engine, prompt_ids, params, n, body, render, param="prompt")


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


@dataclass
class CompletionRender:
    """The `text_completion` objects of one response (the answer and each chunk share a shape). A
    stream sends per choice the echoed prompt, its text pieces, then a chunk with its `finish_reason`."""

    meta: ResponseMeta
    echo: str
    logprobs: bool
    offsets: dict[int, int] = field(default_factory=dict)  # by choice: where its next streamed token starts

    def opening(self, n: int) -> Iterator[bytes]:
        if self.echo:
            for i in range(n):
                yield self.chunk(CompletionChoice(index=i, text=self.echo))

    def events(self, delta: Delta) -> Iterator[bytes]:
        i = delta.index
        if delta.text or (self.logprobs and delta.logprobs):
            lp: dict[str, Any] | None = None
            if self.logprobs:
                offset = self.offsets.get(i, len(self.echo))
                lp = completion_logprobs(delta.logprobs, offset)
                self.offsets[i] = offset + sum(len(e.token) for e in delta.logprobs)
            yield self.chunk(CompletionChoice(index=i, text=delta.text, logprobs=lp))
        if delta.finish_reason is not None:
            finish = delta.finish_reason.value
            yield self.chunk(CompletionChoice(index=i, text="", finish_reason=finish))

    def usage_event(self, usage: Usage) -> bytes:
        return encode_event(self.build([], usage).model_dump())

    def chunk(self, choice: CompletionChoice) -> bytes:
        return encode_event(self.build([choice], usage=None).model_dump())

    def build(self, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(**self.meta.fields(), choices=choices, usage=usage)

    def answer(self, choices: Choices) -> Completion:
        out = []
        for i in range(choices.n):
            lp = completion_logprobs(choices.logprobs[i], len(self.echo)) if self.logprobs else None
            text, finish = self.echo + choices.text(i), choices.finish_reason(i)
            out.append(CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=finish))
        return self.build(out, choices.usage())


routes = (Route("/v1/completions", completions, methods=["POST"]),)

"""POST /tokenize and /detokenize (and under /v1/), in vLLM's shapes.

Tokenize: `model`, then either `prompt` (tokenized with the model's special tokens unless
`add_special_tokens` is false) or `messages` (through the chat template as a chat request would be,
`add_generation_prompt` true by default; `tools` and `chat_template_kwargs` as in chat) → `tokens`,
`count`, `max_model_len` (and `token_strs` with `return_token_strs`). Detokenize: `tokens` →
`prompt`. Both work for generation models and embedding models (`prompt` only: they have no chat
template); the ids a prompt gives are the ones `/v1/embeddings` accepts as token input.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import ChatTemplateError, render_chat
from server.generation.read import get_engine, resolve_model
from server.http.body import read_body
from server.http.errors import APIError
from server.openai.embeddings import get_embedder
from server.openai.schemas import ChatMessage, RequestModel
from server.output.tool_prompt import template_input
from server.output.tool_schemas import FunctionTool
from server.state import AppState, app_state


class TokenizeRequest(RequestModel):
    model: str | None = None  # None or "": the default model
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True  # prompt only: messages get the special tokens their template writes
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[FunctionTool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[int]


async def _tokenizer(state: AppState, name: str | None) -> tuple[str, Any, int, int]:
    """(task, tokenizer, max_model_len, vocab size) of the model `name` names (default: the default one)."""
    cfg = resolve_model(state, name or state.default_model)
    if cfg.task == "embed":
        _, embedder = await get_embedder(state, cfg.id)
        return "embed", embedder, embedder.max_context, embedder.vocab_size
    _, engine = await get_engine(state, cfg.id)
    return "generate", engine.tokenizer, engine.max_context, engine.vocab_size


async def tokenize(request: Request) -> Response:
    state = app_state(request)
    body = await read_body(request, TokenizeRequest, "tokenize")
    task, tok, max_len, _ = await _tokenizer(state, body.model)
    tokens = await asyncio.to_thread(_tokens, task, tok, body)
    tokenizer = tok.tokenizer if task == "embed" else tok
    answer: dict[str, Any] = {"count": len(tokens), "max_model_len": max_len, "tokens": tokens}
    answer["token_strs"] = None
    if body.return_token_strs:
        answer["token_strs"] = [str(t) for t in tokenizer.convert_ids_to_tokens(tokens)]
    return JSONResponse(answer)


def _tokens(task: str, tok: Any, body: TokenizeRequest) -> list[int]:
    if body.prompt is not None:
        if task == "embed" and body.add_special_tokens:
            return [int(t) for t in tok.tokenize(body.prompt)]  # the ids /v1/embeddings would embed
        tokenizer = tok.tokenizer if task == "embed" else tok
        encoded = tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)
        return [int(t) for t in encoded["input_ids"]]
    assert body.messages is not None
    tokenizer = tok.tokenizer if task == "embed" else tok
    messages = [message.to_template() for message in body.messages]
    tools = [tool.to_template() for tool in body.tools or []]
    messages, kwargs = template_input(tokenizer, messages, tools)
    extra = dict(body.chat_template_kwargs or {})
    if body.continue_final_message:
        extra.update(continue_final_message=True, add_generation_prompt=False)
    else:
        extra.setdefault("add_generation_prompt", body.add_generation_prompt)
    try:
        ids = render_chat(tokenizer, messages, **kwargs, **extra)
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None
    return ids


async def detokenize(request: Request) -> Response:
    state = app_state(request)
    body = await read_body(request, DetokenizeRequest, "detokenize")
    task, tok, _, vocab = await _tokenizer(state, body.model)
    bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(
            400, f"token ids must be between 0 and {vocab - 1}", param=f"tokens[{bad}]", code="invalid_value"
        )
    tokenizer = tok.tokenizer if task == "embed" else tok
    text = await asyncio.to_thread(tokenizer.decode, body.tokens, skip_special_tokens=False)
    return JSONResponse({"prompt": text})


routes = (
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
    Route("/v1/tokenize", tokenize, methods=["POST"]),
    Route("/v1/detokenize", detokenize, methods=["POST"]),
)

"""POST /anthropic/v1/messages (alias /v1/messages) and its count_tokens: Anthropic's Messages API.

The same path as chat: validate, render the prompt with the chat template, submit, then answer as
JSON or as Anthropic's named SSE events. Errors take Anthropic's shape (`server.anthropic.errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine import Delta
from server.anthropic.schemas import (
    CountTokensRequest,
    MessageResponse,
    MessagesRequest,
    MessageUsage,
    TokenCount,
    ToolUseOut,
    message_id,
)
from server.anthropic.stream import StreamMeta, message_events
from server.anthropic.translate import content_blocks, prompt_ids, sampling, stop_reason
from server.generation.collect import collect
from server.generation.read import get_engine
from server.generation.submit import first_delta, until_disconnected
from server.http.body import read_body
from server.http.sse import EventStreamResponse
from server.output.parser import parse_output
from server.output.reasoning import opens_thinking
from server.state import app_state

# A streamed request that fails this soon (queue full, engine stopped) still gets an HTTP status;
# after it the stream begins, and pings keep the connection alive until the first token.
FIRST_DELTA_GRACE = 0.25


async def messages(request: Request) -> Response:
    body = await read_body(request, MessagesRequest, "messages")
    cfg, engine = await get_engine(app_state(request), body.model)
    ids = await prompt_ids(engine, body)
    params = sampling(body, ids, engine)
    request_id: str = request.state.request_id
    msg_id = message_id(request_id.removeprefix("req_"))
    tools = frozenset(tool.name for tool in body.active_tools)
    thinking = opens_thinking(engine.tokenizer, ids)

    deltas = engine.generate(ids, params, request_id)
    if body.stream:
        meta = StreamMeta(msg_id, cfg.id, len(ids), body.max_tokens, tools, thinking)
        return await streamed(request, deltas, meta)
    first = await first_delta(request, deltas, param="messages")
    choices = await until_disconnected(request, collect(first, deltas, 1))
    last = choices.last[0]
    assert last is not None  # `collect` raised unless the request finished
    answer = message(msg_id, cfg.id, choices.text(0), last, body.max_tokens, tools, thinking)
    return JSONResponse(answer.model_dump())


async def streamed(request: Request, deltas: AsyncIterator[Delta], meta: StreamMeta) -> Response:
    """The event stream, once the first delta came or `FIRST_DELTA_GRACE` passed without a failure."""
    first = asyncio.create_task(first_delta(request, deltas, param="messages"))
    try:
        await asyncio.wait({first}, timeout=FIRST_DELTA_GRACE)
    except asyncio.CancelledError:
        first.cancel()
        raise
    if first.done():
        first.result()  # raises the failure as an HTTP status
    return EventStreamResponse(message_events(first, deltas, meta))


def message(
    msg_id: str, model: str, text: str, last: Delta, max_tokens: int, tools: frozenset[str], thinking: bool
) -> MessageResponse:
    """The non-streamed answer (`thinking`: the output starts inside `<think>`, opened by the prompt)."""
    blocks = content_blocks(parse_output(text, tools, thinking))
    reason = stop_reason(last, max_tokens, any(isinstance(block, ToolUseOut) for block in blocks))
    return MessageResponse(
        id=msg_id,
        content=blocks,
        model=model,
        stop_reason=reason,
        stop_sequence=last.stop_text if reason == "stop_sequence" else None,
        usage=MessageUsage(input_tokens=last.prompt_tokens, output_tokens=last.completion_tokens),
    )


async def count_tokens(request: Request) -> Response:
    """The templated prompt's length, as `messages` would see it (no model run)."""
    body = await read_body(request, CountTokensRequest, "messages.count_tokens")
    _, engine = await get_engine(app_state(request), body.model)
    ids = await prompt_ids(engine, body)
    return JSONResponse(TokenCount(input_tokens=len(ids)).model_dump())


routes: tuple[BaseRoute, ...] = tuple(
    route
    for prefix in ("/anthropic/v1", "/v1")
    for route in (
        Route(f"{prefix}/messages", messages, methods=["POST"]),
        Route(f"{prefix}/messages/count_tokens", count_tokens, methods=["POST"]),
    )
)

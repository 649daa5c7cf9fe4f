"""POST /v1/responses, and GET/DELETE /v1/responses/{id} and GET /v1/responses/{id}/input_items.

A request goes the chat route's way (`server.openai.chat`): the conversation (a previous response's,
then this input; `translate`) rendered by the chat template with its tools and reasoning switches,
sampled with the chat request's settings and grammars, its output split by the same parser. The
answer is a `response` object, or its events (`events`); with `store` (the default) it is kept
(`store`) for `previous_response_id` and the GET routes, per API key.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from server.generation.collect import collect
from server.generation.params import completion_budget
from server.generation.read import get_engine
from server.generation.submit import first_delta, until_disconnected
from server.http.auth import presented_key
from server.http.body import read_body
from server.http.errors import APIError
from server.http.sse import EventStreamResponse
from server.openai.chat import render_prompt, with_answer_grammar
from server.openai.chat_render import OutputShape
from server.openai.responses.events import response_events, whole_answer
from server.openai.responses.objects import DeletedResponse, ItemList, ResponseObject, new_id
from server.openai.responses.schemas import ResponsesRequest
from server.openai.responses.store import ResponseStore, StoredResponse, owner_of
from server.openai.responses.translate import chat_request, check_supported, input_items, renamed_params
from server.openai.sampling_params import sampling_params
from server.output.reasoning import opens_thinking
from server.state import app_state


def response_store(request: Request) -> ResponseStore:
    state = app_state(request)
    store = state.responses
    if store is None:
        message = state.responses_problem or "this server stores no responses"
        raise APIError(404, message, param="response_id", code="response_not_found")
    return store


def owner(request: Request) -> str:
    """Whose responses a request may see: its key's when the server has keys, else everyone's."""
    return owner_of(presented_key(request.headers)) if app_state(request).settings.api_keys else ""


def not_found(response_id: str) -> APIError:
    message = f"Response with id '{response_id}' not found."
    return APIError(404, message, param="response_id", code="response_not_found")


async def stored(request: Request, response_id: str, param: str = "response_id") -> StoredResponse:
    found = await asyncio.to_thread(response_store(request).get, owner(request), response_id)
    if found is None:
        error = not_found(response_id)
        error.param = param
        raise error
    return found


async def create_response(request: Request) -> Response:
    state = app_state(request)
    body = await read_body(request, ResponsesRequest, "responses")
    check_supported(body)
    items = input_items(body)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        history = (await stored(request, body.previous_response_id, "previous_response_id")).conversation
    if len(history) + len(items) > state.settings.max_messages:
        message = f"too many items: {len(history) + len(items)} with the previous response's, "
        message += f"at most {state.settings.max_messages} are accepted"
        raise APIError(400, message, param="input", code="invalid_value")
    chat = chat_request(body, [*history, *items])
    cfg, engine = await get_engine(state, body.model)
    with renamed_params():
        prompt_ids = await asyncio.to_thread(render_prompt, engine.tokenizer, chat)
        max_tokens = completion_budget(
            len(prompt_ids), body.max_output_tokens, engine.max_context, "input", "max_output_tokens"
        )
        params = with_answer_grammar(engine, chat, prompt_ids, sampling_params(chat, max_tokens, engine))
    shape = OutputShape(
        engine.tokenizer,
        frozenset(tool.function.name for tool in chat.active_tools),
        parallel=body.parallel_tool_calls is not False,
        thinking=opens_thinking(engine.tokenizer, prompt_ids),
    )
    request_id: str = request.state.request_id
    keep = body.wants_store and state.responses is not None
    response = echo(body, new_id("resp", request_id.removeprefix("req_")), cfg.id, chat.tools or [], keep)
    who = owner(request)

    async def save(final: ResponseObject) -> None:
        if keep and state.responses is not None:
            dumped = final.model_dump()
            await asyncio.to_thread(state.responses.put, who, dumped, items, [*history, *items])

    deltas = engine.generate(prompt_ids, params, request_id, 1)
    first = await first_delta(request, deltas, param="input")
    if body.stream:
        return EventStreamResponse(response_events(first, deltas, response, shape, save))
    choices = await until_disconnected(request, collect(first, deltas, 1))
    last = choices.last[0]
    assert last is not None  # `collect` raised unless the request finished
    final = whole_answer(response, choices.text(0), last, choices.token_ids[0], shape)
    await save(final)
    return JSONResponse(final.model_dump())


def echo(
    body: ResponsesRequest, response_id: str, model: str, chat_tools: list[Any], store: bool
) -> ResponseObject:
    """The response in progress: the request's settings as the API echoes them."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    text = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}}
    reasoning = body.reasoning.model_dump(include={"effort", "summary"}) if body.reasoning else {}
    return ResponseObject(
        id=response_id,
        created_at=int(time.time()),
        model=model,
        instructions=body.instructions,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        max_output_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        tools=[{"type": "function", **tool.function.model_dump(exclude_none=True)} for tool in chat_tools],
        tool_choice=body.tool_choice or "auto",
        text=text,
        reasoning={"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        metadata=body.metadata or {},
        user=body.user,
        store=store,
    )


async def retrieve_response(request: Request) -> Response:
    found = await stored(request, request.path_params["response_id"])
    return JSONResponse(found.response)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    deleted = await asyncio.to_thread(response_store(request).delete, owner(request), response_id)
    if not deleted:
        raise not_found(response_id)
    return JSONResponse(DeletedResponse(id=response_id).model_dump())


async def list_input_items(request: Request) -> Response:
    """This response's input items, newest first by default (`order`, `after`, `limit` 1..100)."""
    found = await stored(request, request.path_params["response_id"])
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise APIError(400, "order must be asc or desc", param="order", code="invalid_value")
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise APIError(400, "limit must be an integer from 1 to 100", param="limit", code="invalid_value")
    items = found.input_items if order == "asc" else found.input_items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise APIError(
                400, f"no input item '{after}' in this response", param="after", code="invalid_value"
            )
        items = items[ids.index(after) + 1 :]
    page = items[: int(limit_text)]
    first_id = page[0]["id"] if page else None
    last_id = page[-1]["id"] if page else None
    listing = ItemList(data=page, first_id=first_id, last_id=last_id, has_more=len(items) > len(page))
    return JSONResponse(listing.model_dump())


routes: tuple[BaseRoute, ...] = (
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
    Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
)

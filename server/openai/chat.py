"""POST /v1/chat/completions: validate, render the prompt, then answer as JSON or as SSE chunks."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engine import ChatTemplateError, Engine, SamplingParams, render_chat
from server.generation.params import completion_budget
from server.generation.read import read_generation
from server.generation.respond import ResponseMeta, respond
from server.http.errors import APIError
from server.openai.chat_render import ChatRender, OutputShape
from server.openai.sampling_params import sampling_params
from server.openai.schemas import ChatCompletionRequest, completion_id
from server.output.reasoning import opens_thinking, template_kwargs, thinking_plan
from server.output.tool_grammar import ToolSpec, answer_grammar
from server.output.tool_prompt import template_input


async def chat_completions(request: Request) -> Response:
    body, n, cfg, engine = await read_generation(request, ChatCompletionRequest, "chat.completions")
    prompt_ids = await asyncio.to_thread(render_prompt, engine.tokenizer, body)
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = completion_budget(
        len(prompt_ids), body.max_new_tokens, engine.max_context, param="messages", max_param=max_param
    )
    params = sampling_params(body, max_tokens, engine, bool(body.logprobs), body.top_logprobs or 0)
    params = with_answer_grammar(engine, body, prompt_ids, params)
    meta = ResponseMeta.of(request, completion_id, cfg.id)
    shape = OutputShape(
        engine.tokenizer,
        frozenset(tool.function.name for tool in body.active_tools),
        parallel=body.parallel_tool_calls is not False,
        thinking=opens_thinking(engine.tokenizer, prompt_ids),
    )
    render = ChatRender(meta, params.logprobs, shape)
    return await respond(request, engine, prompt_ids, params, n, body, render, param="messages")


def render_prompt(tokenizer: Any, body: ChatCompletionRequest) -> list[int]:
    """The prompt's ids: the messages and active tools through the chat template (see
    `server.output.tool_prompt`), with the request's reasoning switches; 400 `messages` when it fails."""
    messages = [message.to_template() for message in body.messages]
    tools = [tool.to_template() for tool in body.active_tools]
    messages, kwargs = template_input(tokenizer, messages, tools)
    reasoning = template_kwargs(body.thinking_enabled, body.reasoning_effort, body.chat_template_kwargs)
    try:
        return render_chat(tokenizer, messages, **reasoning, **kwargs)
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None


def with_answer_grammar(
    engine: Engine, body: ChatCompletionRequest, prompt_ids: list[int], params: SamplingParams
) -> SamplingParams:
    """`params` with the grammar of the whole answer: a forced tool call (`tool_choice` required or
    named) and a capped reasoning part (`thinking.budget_tokens`) around the `response_format` one.
    400 `tool_choice` when a call is forced along with a `response_format`, 400 naming the field
    whose grammar does not compile."""
    forced = body.forced_tools
    if forced and params.grammar is not None:
        message = "tool_choice required or a named function cannot be combined with response_format"
        raise APIError(400, message, param="tool_choice")
    budget = body.thinking.budget_tokens if body.thinking is not None else None
    thinking = thinking_plan(engine.tokenizer, prompt_ids, body.thinking_enabled, budget)
    tools = [ToolSpec(tool.function.name, tool.function.parameters) for tool in forced]
    grammar = answer_grammar(thinking, tools, body.parallel_tool_calls is not False, params.grammar)
    if grammar is params.grammar:
        return params
    assert grammar is not None
    problem = engine.check_grammar(grammar)
    if problem is not None:
        param = "tools" if forced else "thinking"
        raise APIError(400, f"{param} cannot be enforced: {problem.splitlines()[0]}", param=param)
    return dataclasses.replace(params, grammar=grammar)


routes = (Route("/v1/chat/completions", chat_completions, methods=["POST"]),)

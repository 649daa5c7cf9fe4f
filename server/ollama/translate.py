"""Ollama requests translated onto the chat path: messages and prompts to token ids, `options` to
`SamplingParams`, `format` and `think` to the answer's grammar.

Messages keep their roles; an assistant's `tool_calls` (arguments as an object) and `tool` results
(`tool_name`) go to the template as OpenAI-shaped calls and tool messages, or are written as text
for a template that knows no tools (`server.output.tool_prompt`). A last assistant message is a
prefill: the answer continues it. `/api/generate` wraps `system` and `prompt` in the chat template,
or, with `raw`, tokenizes the prompt as it is.

`options`: `temperature` (default 0.8), `top_p` (0.9), `top_k` (40), `min_p` (0), `seed`,
`num_predict` (-1 or -2: until the context window is full), `stop`, `repeat_penalty` (default 1.0:
Hearth's penalty covers every prompt and output token rather than Ollama's last 64, so it is off
unless asked), `presence_penalty`, `frequency_penalty`, and `num_ctx`, which narrows the context
window for this request and may not exceed the model's `max_context` (400).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine import ChatTemplateError, Engine, GrammarSpec, SamplingParams, render_chat
from server.generation.params import completion_budget, top_k
from server.http.errors import APIError
from server.ollama.schemas import ChatRequest, GenerateRequest, GenerationRequest, Message, Options
from server.openai.completions import tokenize_prompt
from server.output.reasoning import template_kwargs, template_thinks, thinking_plan
from server.output.tool_grammar import answer_grammar
from server.output.tool_prompt import template_input

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.9
DEFAULT_TOP_K = 40


async def chat_prompt(engine: Engine, body: ChatRequest, model: str) -> list[int]:
    """The templated prompt's ids (a prefill's tokens at the end); 400 when the template fails."""
    check_think(engine, body, model)
    return await _rendered(render_chat_prompt, engine.tokenizer, body)


async def generate_prompt(engine: Engine, body: GenerateRequest, model: str) -> list[int]:
    """The prompt's ids: `system` and `prompt` through the chat template, or `prompt` as is (`raw`)."""
    unsupported = {
        "template": "template is not supported: Hearth renders prompts with the model's chat template "
        "(chat_template in models.yaml); send raw: true to pass a prompt as it is",
        "context": "context is not supported: send the conversation to /api/chat instead",
        "suffix": "suffix (fill-in-the-middle) is not supported",
    }
    for field, message in unsupported.items():
        if getattr(body, field):
            raise APIError(400, message, param=field)
    if body.raw:
        ids, _ = await asyncio.to_thread(tokenize_prompt, engine, body.prompt)
        return ids
    check_think(engine, body, model)
    return await _rendered(render_generate_prompt, engine.tokenizer, body)


async def _rendered(render: Any, tokenizer: Any, body: Any) -> list[int]:
    try:
        return list(await asyncio.to_thread(render, tokenizer, body))
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None


def check_think(engine: Engine, body: GenerationRequest, model: str) -> None:
    """400 when `think` asks a model to reason whose template knows no `<think>` (as Ollama answers)."""
    if body.think and not template_thinks(engine.tokenizer):
        raise APIError(400, f'"{model}" does not support thinking', param="think")


def _think_kwargs(body: GenerationRequest) -> dict[str, Any]:
    if isinstance(body.think, str):
        return template_kwargs(True, body.think)
    return template_kwargs(body.think, None)


def render_chat_prompt(tokenizer: Any, body: ChatRequest) -> list[int]:
    history, prefill = body.messages, ""
    last = history[-1]
    if last.role == "assistant" and not last.tool_calls and last.content:
        history, prefill = history[:-1], last.content
    messages = [template_message(i, m) for i, m in enumerate(history)]
    tools = [tool.to_template() for tool in body.tools or ()]
    messages, kwargs = template_input(tokenizer, messages, tools)
    ids = render_chat(tokenizer, messages, **_think_kwargs(body), **kwargs)
    if prefill:
        ids += [int(t) for t in tokenizer.encode(prefill, add_special_tokens=False)]
    return ids


def render_generate_prompt(tokenizer: Any, body: GenerateRequest) -> list[int]:
    messages = [] if not body.system else [{"role": "system", "content": body.system}]
    messages.append({"role": "user", "content": body.prompt})
    return render_chat(tokenizer, messages, **_think_kwargs(body))


def template_message(i: int, message: Message) -> dict[str, Any]:
    """One Ollama message as the chat template takes it."""
    if message.images:
        raise APIError(
            400, f"messages.{i}.images: images are not supported (no vision model)", param="images"
        )
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        if message.tool_name is not None:
            out["name"] = message.tool_name
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id or f"call_{i}_{j}",
                "type": "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for j, call in enumerate(message.tool_calls)
        ]
    return out


def sampling(body: GenerationRequest, prompt_ids: list[int], engine: Engine) -> SamplingParams:
    """The engine's settings for `options` (Ollama's defaults where unset), and the answer's grammar."""
    options = body.options or Options()
    window = engine.max_context
    if options.num_ctx is not None:
        if options.num_ctx > engine.max_context:
            message = (
                f"options.num_ctx {options.num_ctx} is larger than the model's context window of "
                f"{engine.max_context} tokens (max_context in models.yaml)"
            )
            raise APIError(400, message, param="options.num_ctx")
        window = options.num_ctx
    room = completion_budget(len(prompt_ids), None, window, param="messages")
    asked = options.num_predict
    return SamplingParams(
        temperature=DEFAULT_TEMPERATURE if options.temperature is None else options.temperature,
        top_p=DEFAULT_TOP_P if options.top_p is None else options.top_p,
        top_k=top_k(DEFAULT_TOP_K if options.top_k is None else options.top_k),
        min_p=options.min_p or 0.0,
        max_tokens=room if asked is None or asked < 0 else min(asked, room),
        stop=options.stop_strings,
        seed=options.seed,
        repetition_penalty=1.0 if options.repeat_penalty is None else options.repeat_penalty,
        presence_penalty=options.presence_penalty or 0.0,
        frequency_penalty=options.frequency_penalty or 0.0,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0 if body.logprobs else 0,
        grammar=grammar(body, prompt_ids, engine),
    )


def format_grammar(value: str | dict[str, Any] | None) -> GrammarSpec | None:
    """`format` as a grammar: "json" any JSON object, a dict that JSON Schema, "" or None free text."""
    if value is None or value == "":
        return None
    if value == "json":
        return GrammarSpec.json_object()
    if isinstance(value, dict):
        return GrammarSpec.json_schema(value)
    raise APIError(400, f'invalid format "{value}": use "json" or a JSON Schema object', param="format")


def grammar(body: GenerationRequest, prompt_ids: list[int], engine: Engine) -> GrammarSpec | None:
    """The answer's grammar: `format` after the reasoning part, when the model reasons; 400 `format`
    when it does not compile."""
    answer = format_grammar(body.format)
    if answer is None:
        return None
    enabled = None if body.think is None else bool(body.think)
    thinking = thinking_plan(engine.tokenizer, prompt_ids, enabled, None)
    spec = answer_grammar(thinking, None, True, answer)
    assert spec is not None
    problem = engine.check_grammar(spec)
    if problem is not None:
        raise APIError(400, f"format is not a usable grammar: {problem.splitlines()[0]}", param="format")
    return spec

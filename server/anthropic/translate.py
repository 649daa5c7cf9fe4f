"""The Anthropic Messages API translated onto the chat path, both ways.

Requests: `system` and `messages` become chat-template messages (`tool_use` blocks an assistant's
`tool_calls`, `tool_result` blocks `tool` messages; for a template that knows no tools, both are
written as text in the `<tool_call>` / `<tool_response>` forms), `tools` go to the template as
OpenAI function tools (or into the system prompt, `server.output.tool_prompt`), and the sampling fields
become `SamplingParams` (`tool_choice` any/tool and a thinking budget as a grammar). A last
assistant message is a prefill: the answer continues it. Answers: the model's text is split by
`OutputParser` into text, thinking and `tool_use` blocks, and the engine's finish becomes a
`stop_reason`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine import ChatTemplateError, Delta, Engine, FinishReason, GrammarSpec, SamplingParams, render_chat
from server.anthropic.schemas import (
    ContentOut,
    CountTokensRequest,
    Message,
    MessagesRequest,
    StopReason,
    TextBlock,
    TextOut,
    ThinkingEnabled,
    ThinkingOut,
    ToolChoiceAny,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
)
from server.generation.params import completion_budget, top_k
from server.http.errors import APIError
from server.output.parser import Piece
from server.output.reasoning import thinking_plan
from server.output.tool_grammar import ToolSpec, answer_grammar
from server.output.tool_parser import ParsedCall, render_call
from server.output.tool_prompt import template_input, template_knows_tools


async def prompt_ids(engine: Engine, body: CountTokensRequest) -> list[int]:
    """The templated prompt's token ids (a prefill's tokens at the end); 400 when the template fails."""
    try:
        return await asyncio.to_thread(render_prompt, engine.tokenizer, body)
    except ChatTemplateError as e:
        raise APIError(400, f"could not apply the chat template: {e}", param="messages") from None


def render_prompt(tokenizer: Any, body: CountTokensRequest) -> list[int]:
    """The prompt's ids: the template applied to the history, then the tokens of a prefill (a last
    assistant message of text only), which the answer continues."""
    history, prefill = body.messages, ""
    last = history[-1]
    texts = [block.text for block in last.blocks if isinstance(block, TextBlock)]
    if last.role == "assistant" and len(texts) == len(last.blocks):
        history, prefill = history[:-1], "\n".join(texts)
    messages = chat_messages(body.system_text, history, template_knows_tools(tokenizer))
    tools = [tool.to_openai() for tool in body.active_tools]
    messages, kwargs = template_input(tokenizer, messages, tools)
    ids = render_chat(tokenizer, messages, enable_thinking=body.thinking_enabled, **kwargs)
    if prefill:
        ids += [int(t) for t in tokenizer.encode(prefill, add_special_tokens=False)]
    return ids


def chat_messages(system: str | None, messages: list[Message], native_tools: bool) -> list[dict[str, Any]]:
    """`system` and `messages` as chat-template messages (role and string content)."""
    out: list[dict[str, Any]] = [] if system is None else [{"role": "system", "content": system}]
    for i, message in enumerate(messages):
        if message.role == "user":
            out.extend(_user(i, message, native_tools))
        else:
            out.append(_assistant(i, message, native_tools))
    return out


def _user(i: int, message: Message, native_tools: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(message.blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolResultBlock):
            result = f"Error: {block.text}" if block.is_error else block.text
            if not native_tools:
                texts.append(f"<tool_response>\n{result}\n</tool_response>")
                continue
            if texts:
                out.append({"role": "user", "content": "\n".join(texts)})
                texts = []
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": result})
        elif isinstance(block, ToolUseBlock):
            raise _misplaced(i, j, "tool_use", "assistant")
    if texts or not out:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant(i: int, message: Message, native_tools: bool) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[ToolUseBlock] = []
    for j, block in enumerate(message.blocks):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(block)
        elif isinstance(block, ToolResultBlock):
            raise _misplaced(i, j, "tool_result", "user")
        # thinking blocks from earlier turns are not shown to the model again
    if not native_tools:
        texts += [render_call(ParsedCall(call.name, call.input)) for call in calls]
        return {"role": "assistant", "content": "\n".join(texts)}
    out: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.input}}
            for c in calls
        ]
    return out


def _misplaced(i: int, j: int, kind: str, role: str) -> APIError:
    message = f"messages.{i}.content.{j}: {kind} blocks may only appear in {role} messages"
    return APIError(400, message, param=f"messages.{i}.content.{j}")


def sampling(body: MessagesRequest, prompt_ids: list[int], engine: Engine) -> SamplingParams:
    """The engine's settings (Anthropic's defaults: temperature 1, no top-p or top-k). `max_tokens` is
    cut to what is left of the context window, as Anthropic's `model_context_window_exceeded` does.
    `tool_choice` any or tool, and `thinking.budget_tokens`, are enforced by a grammar."""
    room = completion_budget(len(prompt_ids), None, engine.max_context, param="messages")
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k(body.top_k),
        max_tokens=min(body.max_tokens, room),
        stop=tuple(body.stop_sequences or ()),
        grammar=grammar(body, prompt_ids, engine),
    )


def grammar(body: MessagesRequest, prompt_ids: list[int], engine: Engine) -> GrammarSpec | None:
    """The answer's grammar: a forced call for `tool_choice` any (of the tools) or tool (that one), a
    capped reasoning part for `thinking.budget_tokens`; 400 naming the field that cannot be enforced."""
    choice = body.tool_choice
    forced = []
    if isinstance(choice, ToolChoiceAny):
        forced = list(body.tools or ())
    elif isinstance(choice, ToolChoiceTool):
        forced = [tool for tool in body.tools or () if tool.name == choice.name]
    parallel = not (isinstance(choice, ToolChoiceAny | ToolChoiceTool) and choice.disable_parallel_tool_use)
    enabled = body.thinking_enabled
    budget = body.thinking.budget_tokens if isinstance(body.thinking, ThinkingEnabled) else None
    thinking = thinking_plan(engine.tokenizer, prompt_ids, enabled, budget)
    tools = [ToolSpec(tool.name, tool.input_schema) for tool in forced]
    spec = answer_grammar(thinking, tools, parallel)
    if spec is not None:
        problem = engine.check_grammar(spec)
        if problem is not None:
            param = "tools" if forced else "thinking"
            raise APIError(400, f"{param} cannot be enforced: {problem.splitlines()[0]}", param=param)
    return spec


def stop_reason(last: Delta, asked_tokens: int, tool_used: bool) -> StopReason:
    """Why the answer ended, in Anthropic's terms, from the request's last delta."""
    if tool_used:
        return "tool_use"
    if last.finish_reason is FinishReason.LENGTH:
        return "max_tokens" if last.completion_tokens >= asked_tokens else "model_context_window_exceeded"
    return "stop_sequence" if last.stop_text is not None else "end_turn"


def content_blocks(pieces: list[Piece]) -> list[ContentOut]:
    """Merged pieces as content blocks; an empty answer is one empty text block."""
    blocks: list[ContentOut] = []
    for piece in pieces:
        if piece.call is not None:
            blocks.append(ToolUseOut(name=piece.call.name, input=piece.call.arguments))
        elif piece.kind == "thinking":
            blocks.append(ThinkingOut(thinking=piece.text))
        else:
            blocks.append(TextOut(text=piece.text))
    return blocks or [TextOut(text="")]

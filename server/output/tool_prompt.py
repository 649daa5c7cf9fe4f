"""Tools shown to a model: through its chat template when the template knows them, else as text.

A template that renders `tools` gets them as OpenAI function tools (`apply_chat_template(tools=...)`).
For one that does not (SmolLM2's, plain ChatML), the tools are described in the system prompt with
the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` form `server.output.tool_parser` reads; and
when the template does not render `tool_calls` either, an earlier turn's calls are written as that
text and tool results as `<tool_response>` text in a user turn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from server.output.tool_parser import ParsedCall, render_call

TOOLS_PROMPT = """# Tools

You can call functions to help with the user's request. Their signatures, as JSON, are between \
<tools></tools> tags:
<tools>
{tools}
</tools>

To call a function, answer with a JSON object holding its name and arguments between \
<tool_call></tool_call> tags, one per call:
<tool_call>
{{"name": <function-name>, "arguments": <arguments-object>}}
</tool_call>"""


def _template_text(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        return " ".join(str(t) for t in template.values())
    return str(template)


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template uses a `tools` variable."""
    return re.search(r"\btools\b", _template_text(tokenizer)) is not None


def template_knows_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders assistant `tool_calls` (else they are written as text)."""
    return "tool_calls" in _template_text(tokenizer)


def tools_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system-prompt text describing `tools` (OpenAI function tools) and the call format."""
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))


def with_tools_prompt(
    messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """`messages` with the tools described at the end of the first system message (a new one first
    when there is none)."""
    text = tools_prompt(tools)
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        content = first.get("content") or ""
        return [{**first, "content": f"{content}\n\n{text}" if content else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def calls_as_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` for a template that knows no `tool_calls`: an assistant's calls appended to its
    content in the `<tool_call>` form, runs of `tool` messages one user turn of `<tool_response>`s."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "tool":
            response = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
            continue
        calls = message.get("tool_calls")
        if message.get("role") == "assistant" and calls:
            texts = [message["content"]] if message.get("content") else []
            texts += [render_call(_parsed(call)) for call in calls]
            message = {k: v for k, v in message.items() if k != "tool_calls"}
            message["content"] = "\n".join(texts)
        out.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


def _parsed(call: Mapping[str, Any]) -> ParsedCall:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            arguments = {"arguments": arguments}
    return ParsedCall(str(function.get("name", "")), arguments if isinstance(arguments, dict) else {})


def template_input(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The messages and keyword arguments for `render_chat`: `tools` passed to a template that renders
    them, else described in the system prompt; calls and results written as text for a template that
    knows no `tool_calls`."""
    if not template_knows_tools(tokenizer):
        messages = calls_as_text(messages)
    if not tools:
        return messages, {}
    if template_renders_tools(tokenizer):
        return messages, {"tools": list(tools)}
    return with_tools_prompt(messages, tools), {}

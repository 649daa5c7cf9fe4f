"""Grammars (llguidance Lark) that shape a whole answer: forced tool calls, a capped reasoning part.

JSON (calls' arguments, a `response_format` answer) is bounded so that it ends: integers to 64 bits,
numbers to a sane length, free-form values to a small depth (`engine.sampling.json_bounds`).

A forced call (`tool_choice` required or a named function, Anthropic's `any` or `tool`) is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, the JSON held to an `anyOf` over
the allowed tools (name constant, arguments the tool's parameter schema); with parallel calls
allowed, one or more such blocks. `server.output.parser` reads them back.

A reasoning budget caps the thinking part: `think[max_tokens=N]` then a forced `</think>`. The
thinking lexeme cannot hold `<`: a greedy lexeme that may contain `<` swallows the closing tag's
first bytes and can no longer end on `</think>` by itself. So under a budget a `<` closes the
thinking (the grammar then forces the rest of `</think>`). Without a budget (only when a call is
forced after thinking) the thinking is one lazy lexeme that ends at the first `</think>`.

The reasoning part comes first, then the answer: free text (at least one visible character: a
small model would end right after the forced `</think>`), the forced calls, or a JSON answer
(`response_format`, inlined with `%json`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine import GrammarSpec, bounded_schema
from server.output.parser import THINK_CLOSE, THINK_OPEN
from server.output.tool_parser import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

# JSON as small models write it: one line, `{"a": 1, "b": 2}` (free whitespace lets them wander).
JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class ToolSpec:
    """One callable tool: its name and the JSON Schema of its arguments (None: any object)."""

    name: str
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Thinking:
    """The reasoning part of an answer: `opened` when the prompt already ends with `<think>` (else
    the answer opens it); `budget` caps its tokens (None: uncapped)."""

    opened: bool
    budget: int | None = None


def call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON Schema of one call of any of `tools`: `{"name": <const>, "arguments": {...}}`.

    Each tool's parameter schema moves under `$defs` (`#/$defs/tool<i>`), its own `#/...` references
    rewritten to point there, so that `$defs` of different tools (pydantic's `#/$defs/Model`) neither
    clash nor dangle once the schemas share one root.
    """
    defs: dict[str, Any] = {}
    options = []
    for i, tool in enumerate(tools):
        key = f"tool{i}"
        defs[key] = (
            _rebased(dict(tool.parameters), f"#/$defs/{key}") if tool.parameters else {"type": "object"}
        )
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": {"$ref": f"#/$defs/{key}"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return bounded_schema({"x-guidance": JSON_STYLE, "$defs": defs, "anyOf": options})


def _rebased(schema: Any, root: str) -> Any:
    """`schema` with every local reference (`#`, `#/...`) made relative to `root` instead."""
    if isinstance(schema, dict):
        out = {k: _rebased(v, root) for k, v in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
            out["$ref"] = root + ref[1:]
        return out
    if isinstance(schema, list):
        return [_rebased(v, root) for v in schema]
    return schema


def tool_calls_rules(tools: Sequence[ToolSpec], parallel: bool) -> str:
    """Lark rules defining `answer`: one forced call, or (parallel) one or more back to back. (No
    newline between calls: a small model offered one after a call writes it rather than end, and is
    then held to another call; offered `<` or the end, it ends.)"""
    open_tag, close_tag = _lit(TOOL_CALL_OPEN + "\n"), _lit("\n" + TOOL_CALL_CLOSE)
    return (
        f"answer: call{'+' if parallel else ''}\n"
        f"call: {open_tag} call_json {close_tag}\n"
        f"call_json: %json {json.dumps(call_schema(tools), ensure_ascii=False)}\n"
    )


def answer_rules(answer: GrammarSpec | None) -> str | None:
    """Lark rules defining `answer` for a whole-answer grammar (None: free text); None when it cannot
    be inlined (a Lark grammar of its own, a boolean schema)."""
    if answer is None:  # after a capped reasoning part: an answer, not just the end
        return "answer: TEXT\nTEXT: /[^ \\t\\r\\n](?s:.*)/\n"
    if answer.kind == "json_object":
        schema: Any = {"type": "object"}
    elif answer.kind == "json_schema":
        schema = json.loads(answer.source)
        if not isinstance(schema, dict):
            return None
    else:
        return None
    schema = bounded_schema({"x-guidance": JSON_STYLE, **schema})
    return f"answer: %json {json.dumps(schema, ensure_ascii=False)}\n"


def thinking_rules(thinking: Thinking) -> str:
    """Lark rules defining `reasoning`: the thinking part, its closing tag and the blanks after it."""
    opening = "" if thinking.opened else f"{_lit(THINK_OPEN)} "
    close = f"{_lit(THINK_CLOSE)} BLANK"
    if thinking.budget is None:
        # Lazy: ends at the first closing tag, whatever comes before it.
        body = f"think[lazy]: /(?s:.*){_re(THINK_CLOSE)}/\n"
        return f"reasoning: {opening}think BLANK\n{body}BLANK: /[ \\t\\r\\n]*/\n"
    body = f"think[max_tokens={thinking.budget}]: /[^<]*/\n"
    return f"reasoning: {opening}think {close}\n{body}BLANK: /[ \\t\\r\\n]*/\n"


def answer_grammar(
    thinking: Thinking | None,
    tools: Sequence[ToolSpec] | None = None,
    parallel: bool = True,
    answer: GrammarSpec | None = None,
) -> GrammarSpec | None:
    """The grammar of a whole answer: the reasoning part (when `thinking` asks for a shape), then the
    forced calls of `tools` (when given), else `answer` (a JSON grammar, or None for free text).

    None when nothing needs constraining; `answer` itself when it cannot be combined with thinking.
    """
    needs_thinking = thinking is not None and (thinking.budget is not None or tools)
    if tools:
        rules: str | None = tool_calls_rules(tools, parallel)
    elif not needs_thinking:
        return answer
    else:
        rules = answer_rules(answer)
        if rules is None:
            return answer
    if needs_thinking:
        assert thinking is not None
        return GrammarSpec.lark(f"start: reasoning answer\n{thinking_rules(thinking)}{rules}")
    return GrammarSpec.lark(f"start: answer\n{rules}")


def _lit(text: str) -> str:
    """`text` as a Lark string literal."""
    return json.dumps(text)


def _re(text: str) -> str:
    """`text` escaped for a Lark `/.../` regex."""
    return "".join(f"\\{c}" if c in "/\\.^$|?*+()[]{}" else c for c in text)

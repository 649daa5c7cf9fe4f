"""Tool calls written by a model as text, recognised for every API family.

Two forms: the Hermes/Qwen tag `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, and an
answer that is one bare JSON object of that shape. The arguments may be under `arguments`,
`input` or `parameters`, as an object or as JSON text of one. A call counts only when it names a
declared tool; anything else stays text. Each API turns a `ParsedCall` into its own shape
(Anthropic `tool_use` blocks, OpenAI `tool_calls`); `server.output.parser` finds them in a stream.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_ARGUMENT_KEYS = ("arguments", "input", "parameters")


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def parse_call(text: str, names: Collection[str]) -> ParsedCall | None:
    """`text` as one call of a tool in `names`, or None when it is not one (bad JSON, unknown name)."""
    try:
        obj = json.loads(text.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI's {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments: Any = next((obj[key] for key in _ARGUMENT_KEYS if key in obj), {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(name, arguments)


def render_call(call: ParsedCall) -> str:
    """A call in the tag form that `parse_call` reads back: how a template without tool support shows
    an earlier turn's call to the model."""
    payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"

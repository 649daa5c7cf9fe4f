"""OpenAI chat `tools`, `tool_choice` and `thinking` request fields (see `docs/api.md`), and the
`tool_calls` of an answer."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.output.tool_parser import ParsedCall

ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class _Request(BaseModel):  # as server.schemas.RequestModel, which imports this module
    model_config = ConfigDict(strict=True, extra="allow")


class FunctionDefinition(_Request):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema of the arguments object
    strict: bool | None = None


class FunctionTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition

    def to_template(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's function-tool shape, without `strict`)."""
        function: dict[str, Any] = {"name": self.function.name}
        if self.function.description is not None:
            function["description"] = self.function.description
        function["parameters"] = self.function.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ThinkingOption(_Request):
    """`thinking`: reasoning on or off for templates that take it; `budget_tokens` caps it."""

    type: Literal["enabled", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1)


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


def call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def tool_call(call: ParsedCall, id: str | None = None) -> dict[str, Any]:
    """A parsed call as an OpenAI `tool_calls` entry (`arguments` as JSON text)."""
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    function = {"name": call.name, "arguments": arguments}
    return {"id": id or call_id(), "type": "function", "function": function}

"""Pydantic models mirroring Anthropic's Messages API (see "Anthropic Messages" in `docs/api.md`).

Requests validate strictly and keep unknown fields (logged once, ignored), like the OpenAI ones.
Content blocks are told apart by their `type`; a block type this server cannot use (an image,
a document) is a 400 naming it.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from server.openai.schemas import RequestModel

MIN_THINKING_BUDGET = 1024
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]


class TextBlock(RequestModel):
    type: Literal["text"]
    text: str


class ToolUseBlock(RequestModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(block.text for block in self.content)
        return self.content or ""


class ThinkingBlock(RequestModel):
    """An earlier answer's reasoning, sent back by clients; not shown to the model again."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(RequestModel):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @property
    def blocks(self) -> list[ContentBlock]:
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return self.content


class Tool(RequestModel):
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    def to_openai(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's function-tool shape)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.input_schema}
        if self.description is not None:
            function["description"] = self.description
        return {"type": "function", "function": function}


class ToolChoiceAuto(RequestModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(RequestModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(RequestModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(RequestModel):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(RequestModel):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=MIN_THINKING_BUDGET)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(RequestModel):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingBetweenTools(RequestModel):
    type: Literal["between_tools"]


class ThinkingDisabled(RequestModel):
    type: Literal["disabled"]


ThinkingConfig = Annotated[
    ThinkingEnabled | ThinkingAdaptive | ThinkingBetweenTools | ThinkingDisabled, Field(discriminator="type")
]


class Metadata(RequestModel):
    user_id: str | None = None


class CountTokensRequest(RequestModel):
    """POST /v1/messages/count_tokens: what shapes the prompt."""

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        if choice is None or isinstance(choice, ToolChoiceNone):
            return choice
        names = [tool.name for tool in info.data.get("tools") or ()]
        if not names:
            raise PydanticCustomError("tool_choice", "tool_choice may only be given along with tools")
        if isinstance(choice, ToolChoiceTool) and choice.name not in names:
            message = "tool_choice names the tool {name}, which is not in tools"
            raise PydanticCustomError("tool_choice", message, {"name": repr(choice.name)})
        return choice

    @property
    def system_text(self) -> str | None:
        if isinstance(self.system, list):
            return "\n".join(block.text for block in self.system)
        return self.system

    @property
    def thinking_enabled(self) -> bool:
        return self.thinking is not None and not isinstance(self.thinking, ThinkingDisabled)

    @property
    def active_tools(self) -> list[Tool]:
        """The tools the model may call: none when `tool_choice` is `none`."""
        if isinstance(self.tool_choice, ToolChoiceNone):
            return []
        return list(self.tools or ())


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages. Anthropic's ranges: temperature 0..1, top_p 0..1, top_k ≥ 0."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool | None = None
    metadata: Metadata | None = None
    service_tier: str | None = None

    @field_validator("max_tokens")
    @classmethod
    def _above_thinking_budget(cls, max_tokens: int, info: ValidationInfo) -> int:
        thinking = info.data.get("thinking")
        if isinstance(thinking, ThinkingEnabled) and thinking.budget_tokens >= max_tokens:
            raise PydanticCustomError(
                "thinking_budget", "max_tokens must be greater than thinking.budget_tokens"
            )
        return max_tokens


# Responses.


def message_id(hex_id: str | None = None) -> str:
    return f"msg_{hex_id or secrets.token_hex(12)}"


def tool_use_id() -> str:
    return f"toolu_{secrets.token_hex(12)}"


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # nothing to verify: a local model's reasoning is not signed


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str = Field(default_factory=tool_use_id)
    name: str
    input: dict[str, Any]


ContentOut = TextOut | ThinkingOut | ToolUseOut
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessageResponse(BaseModel):
    id: str = Field(default_factory=message_id)
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentOut]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(BaseModel):
    input_tokens: int

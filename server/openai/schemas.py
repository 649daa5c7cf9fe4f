"""Pydantic models mirroring the OpenAI chat and models APIs, field for field (see `docs/api.md`).

Requests validate strictly (a string is not a number) and keep unknown fields in `model_extra`,
so the route can log and ignore them. Responses are plain models dumped with `model_dump()`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from server.output.response_format import ResponseFormat
from server.output.tool_schemas import (
    FunctionTool,
    NamedToolChoice,
    ReasoningEffort,
    ThinkingOption,
    ToolChoice,
)

Role = Literal["system", "developer", "user", "assistant", "tool"]
NonEmptyStr = Annotated[str, Field(min_length=1)]
MAX_STOP = 4


def omit_none(value: Any) -> bool:
    return value is None


class RequestModel(BaseModel):
    """Base of request bodies: strict types, unknown fields kept (and ignored)."""

    model_config = ConfigDict(strict=True, extra="allow")


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class FunctionCall(RequestModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCall(RequestModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestModel):
    role: Role
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    content: str | list[TextPart] | None = Field(default=None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_required(cls, value: str | list[TextPart] | None, info: ValidationInfo) -> Any:
        if value is None and "role" in info.data:
            if not (info.data["role"] == "assistant" and info.data.get("tool_calls")):
                raise PydanticCustomError(
                    "missing_content", "content is required unless an assistant message has tool_calls"
                )
        return value

    @property
    def text(self) -> str | None:
        """The content as one string: text parts joined by newlines."""
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content)
        return self.content

    def to_template(self) -> dict[str, Any]:
        """The message as a chat-template dict: `role`, `content` (a string) and any optional fields."""
        message: dict[str, Any] = {"role": self.role, "content": self.text}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [_call_for_template(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def _call_for_template(call: ToolCall) -> dict[str, Any]:
    """A history call for the template: `arguments` as an object when it is JSON of one (templates
    write `arguments | tojson`), else the text as sent."""
    out = call.model_dump()
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        return out
    if isinstance(arguments, dict):
        out["function"]["arguments"] = arguments
    return out


class StreamOptions(RequestModel):
    include_usage: bool | None = None


def _logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    """Keys must be token ids written as integer strings, values -100..100 (ids < vocab: in the route)."""
    for key, bias in (value or {}).items():
        if not key.isdigit():
            raise PydanticCustomError(
                "logit_bias_key", "keys must be token ids (integer strings), got {key}", {"key": repr(key)}
            )
        if not -100 <= bias <= 100:
            raise PydanticCustomError("logit_bias_value", "bias values must be between -100 and 100")
    return value


class GenerationRequest(RequestModel):
    """Fields shared by chat and (legacy) completions: sampling, stop strings, streaming, n."""

    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # Extensions that local users expect (vLLM's meaning): top_k 0 or -1 is off.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    ignore_eos: bool | None = None  # keep generating past the end-of-sequence token (benchmarks)
    # Structured output (constrained decoding, server.response_format); json_mode = json_object.
    response_format: ResponseFormat | None = None
    json_mode: bool | None = None
    # Accepted, no effect on the output.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None

    _check_logit_bias = field_validator("logit_bias")(_logit_bias)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions. Range checks live here; limits that depend on the model in the route."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Tools (server.tool_schemas); `tools` before `tool_choice`, which is checked against it.
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Reasoning, for templates that take it (server.reasoning); chat_template_kwargs as vLLM's.
    thinking: ThinkingOption | None = None
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # Accepted, no effect on the output.
    sess_id: Any = None
    retries: Any = None
    enable_search: bool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise PydanticCustomError("needs_logprobs", "top_logprobs requires logprobs to be true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool(cls, choice: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if choice is None or choice in ("none", "auto") or "tools" not in info.data:
            return choice
        names = [tool.function.name for tool in info.data["tools"] or ()]
        if not names:
            raise PydanticCustomError("tool_choice", "tool_choice required or a named function needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            message = "tool_choice names the function {name}, which is not in tools"
            raise PydanticCustomError("tool_choice", message, {"name": repr(choice.function.name)})
        return choice

    @field_validator("enable_search")
    @classmethod
    def _no_search(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError("unsupported", "web search is not available on this server")
        return value

    @property
    def active_tools(self) -> list[FunctionTool]:
        """The tools the model may call: none when `tool_choice` is `none`."""
        return [] if self.tool_choice == "none" else list(self.tools or ())

    @property
    def forced_tools(self) -> list[FunctionTool]:
        """The tools one of which must be called: all for `required`, the named one, else none."""
        if self.tool_choice == "required":
            return list(self.tools or ())
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            return [tool for tool in self.tools or () if tool.function.name == name]
        return []

    @property
    def thinking_enabled(self) -> bool | None:
        """True or False when `thinking` turned reasoning on or off, else None."""
        return None if self.thinking is None else self.thinking.type == "enabled"

    @property
    def max_new_tokens(self) -> int | None:
        """`max_completion_tokens` when given, else `max_tokens`, else None (the rest of the context)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Responses.


def completion_id(hex_id: str | None = None) -> str:
    return f"chatcmpl-{hex_id or secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)

    @classmethod
    def of(
        cls, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0
    ) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens),
        )


class ResponseHead(BaseModel):
    """The fields every response object and stream chunk starts with (`object` set by each kind)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str | None = None


class _ReasoningAndTools(BaseModel):
    """The parts of an assistant message beside its content; left out of the JSON when absent."""

    reasoning_content: str | None = Field(default=None, exclude_if=omit_none)
    reasoning: str | None = Field(default=None, exclude_if=omit_none)  # the same text, vLLM's newer name
    tool_calls: list[dict[str, Any]] | None = Field(default=None, exclude_if=omit_none)


class ResponseMessage(_ReasoningAndTools):
    role: Literal["assistant"] = "assistant"
    content: str | None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None


class ChatCompletion(ResponseHead):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    choices: list[Choice]
    usage: Usage


class DeltaMessage(_ReasoningAndTools):
    role: Literal["assistant"] | None = Field(default=None, exclude_if=omit_none)
    content: str | None = Field(default=None, exclude_if=omit_none)


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseHead):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = Field(default=None, exclude_if=omit_none)


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    loaded: bool = False  # Hearth extension: the weights are in memory


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]

"""The request side of the OpenAI Responses API (`POST /v1/responses`), mirroring
`openai.types.responses.response_create_params` field for field.

Input items and tools are validated one by one in `server.openai.responses.translate` (by their
`type`), so that an error names the item (`input[2].call_id`, `tools[0].type`) rather than every
member of a union. Unknown fields are kept in `model_extra` and ignored, as on the other routes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from server.openai.schemas import RequestModel
from server.output.tool_schemas import ReasoningEffort, ToolName

Status = Literal["in_progress", "completed", "incomplete"]
MessageRole = Literal["user", "system", "developer", "assistant"]


class ContentPart(RequestModel):
    """A text part of a message: `input_text` (user, system), `output_text` or `refusal` (an
    assistant's, passed back). Images, files and audio are refused in `translate`."""

    type: Literal["input_text", "output_text", "refusal", "text"]
    text: str | None = None
    refusal: str | None = None

    @property
    def value(self) -> str:
        return self.text if self.text is not None else self.refusal or ""


class MessageItem(RequestModel):
    """`{"role": ..., "content": ...}` (an easy input message, `type` optional) or a message item."""

    type: Literal["message"] = "message"
    role: MessageRole
    content: str | list[dict[str, Any]]
    id: str | None = None
    status: Status | None = None


class FunctionCallItem(RequestModel):
    """A call the model made, passed back: `call_id` pairs it with its `function_call_output`."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: Status | None = None


class FunctionCallOutputItem(RequestModel):
    """The result of a call: `output` is text, or a list of `input_text` parts."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: Status | None = None


class ReasoningItem(RequestModel):
    """An earlier answer's reasoning, passed back; it is not shown to the model again."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None


class FunctionToolDef(RequestModel):
    """`{"type": "function", "name", "description", "parameters", "strict"}` (flat, unlike chat's)."""

    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(RequestModel):
    """`text.format`: `{"type": "text"}`, `{"type": "json_object"}`, or `{"type": "json_schema",
    "name", "schema", "description", "strict"}` (flat, unlike chat's `response_format`)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # `schema` is the spec's name for it; pydantic reserves the attribute.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise PydanticCustomError("json_schema", "a json_schema format needs a name and a schema")
        return self


class TextConfig(RequestModel):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(RequestModel):
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(RequestModel):
    """POST /v1/responses. `input` and `tools` hold raw items, checked by `translate`."""

    model: str
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None
    stream: bool | None = None
    include: list[str] | None = None
    # Refused when set (a 400 naming the field): `translate.check_supported`.
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Accepted, no effect on the output.
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        if value is not None and (
            len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
        ):
            message = "metadata holds at most 16 pairs, keys up to 64 characters, values up to 512"
            raise PydanticCustomError("metadata", message)
        return value

    @property
    def wants_store(self) -> bool:
        """`store` defaults to true, as in the API."""
        return self.store is not False

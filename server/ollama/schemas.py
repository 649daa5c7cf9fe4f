"""Pydantic models mirroring Ollama's API (`/api/chat`, `/api/generate`, `/api/show`, `/api/embed`).

Requests validate strictly and keep unknown fields (logged once, ignored), like the OpenAI ones.
`options` holds the sampling settings Hearth applies (see `server.ollama.translate`); any other option
(`num_gpu`, `mirostat`, `repeat_last_n`, ...) is logged once and ignored, as Ollama does with ones it
does not know. Answers are plain dicts built in `server.ollama.stream` and `server.ollama.models`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from server.openai.schemas import RequestModel
from server.output.tool_schemas import FunctionTool

KeepAlive = float | int | str
Think = bool | Literal["low", "medium", "high"]
# `format`: "" (free text), "json" (any JSON value, as an object) or a JSON Schema of the answer.
Format = str | dict[str, Any]


class Options(RequestModel):
    """The options Hearth maps onto its sampler (Ollama's names and ranges)."""

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    num_predict: int | None = Field(default=None, ge=-2)
    stop: str | list[str] | None = None
    repeat_penalty: float | None = Field(default=None, gt=0)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    num_ctx: int | None = Field(default=None, ge=1)

    @field_validator("num_predict")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            message = "num_predict must be at least 1, or -1 (until the context is full) or -2 (fill it)"
            raise PydanticCustomError("num_predict", message)
        return value

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(s for s in self.stop or () if s)


class CallFunction(RequestModel):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)  # an object; JSON text is accepted
    index: int | None = None


class ToolCall(RequestModel):
    function: CallFunction
    id: str | None = None


class Message(RequestModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None  # an earlier answer's reasoning: not shown to the model again
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class ModelRequest(RequestModel):
    """A request naming a model: `model`, or `name` as older clients send it."""

    model: str = ""
    name: str | None = None

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


class GenerationRequest(ModelRequest):
    """What `/api/chat` and `/api/generate` share."""

    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class ChatRequest(GenerationRequest):
    """POST /api/chat."""

    messages: list[Message] = Field(default_factory=list)
    tools: list[FunctionTool] | None = None


class GenerateRequest(GenerationRequest):
    """POST /api/generate."""

    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ShowRequest(ModelRequest):
    verbose: bool | None = None


class EmbedRequest(ModelRequest):
    """POST /api/embed."""

    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(ModelRequest):
    """POST /api/embeddings (the older, one-prompt form)."""

    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive | None = None

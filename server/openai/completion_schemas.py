"""Pydantic models of the legacy OpenAI completions API (POST /v1/completions), request and response."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from server.openai.schemas import GenerationRequest, ResponseHead, Usage, omit_none

TokenId = Annotated[int, Field(ge=0)]
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


class CompletionRequest(GenerationRequest):
    """One prompt: a string, a token id list, or a list holding one of those (several prompts: 400)."""

    prompt: str | list[str] | Annotated[list[TokenId], Field(min_length=1)] | list[list[TokenId]]
    max_tokens: int | None = Field(default=None, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise PydanticCustomError("one_prompt", "only one prompt per request is supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise PydanticCustomError("unsupported", "suffix (insertion) is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, value: int | None) -> int | None:
        if value is not None and value > 1:
            raise PydanticCustomError("unsupported", "best_of > 1 is not supported; use n")
        return value

    @property
    def prompt_value(self) -> str | list[int]:
        """The single prompt, as text or as token ids."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            only: Any = prompt[0]
            return only if isinstance(only, str) else list(only)
        return prompt if isinstance(prompt, str) else [int(t) for t in prompt]  # type: ignore[arg-type]

    @property
    def max_new_tokens(self) -> int:
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens


def text_completion_id(hex_id: str | None = None) -> str:
    return f"cmpl-{hex_id or secrets.token_hex(12)}"


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class Completion(ResponseHead):
    """The response, and each streamed chunk (same shape; the usage-only chunk has no choices)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default=None, exclude_if=omit_none)

"""`response_format` and `json_mode`: the request's output format as the engine's grammar."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from engine import GrammarSpec
from server.http.errors import APIError


class RequestModel(BaseModel):  # as server.schemas.RequestModel, which imports this module
    model_config = ConfigDict(strict=True, extra="allow")


class JsonSchema(RequestModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    # `schema` is the spec's name for it; pydantic reserves the attribute.
    schema_: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`.

    One model rather than a tagged union, so that errors name plain field paths
    (`response_format.json_schema.name`)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise PydanticCustomError(
                "json_schema_required", "response_format.json_schema is required when type is json_schema"
            )
        return self


def output_grammar(response_format: ResponseFormat | None, json_mode: bool | None) -> GrammarSpec | None:
    """The grammar the output must match, or None for free text.

    `json_schema` without a schema means any JSON object, like `json_object` (and `json_mode`).
    """
    if response_format is not None and response_format.json_schema is not None:
        schema = response_format.json_schema.schema_
        return GrammarSpec.json_object() if schema is None else GrammarSpec.json_schema(schema)
    if response_format is not None and response_format.type == "json_object" or json_mode:
        return GrammarSpec.json_object()
    return None


def check_grammar(engine: Any, grammar: GrammarSpec | None, param: str) -> None:
    """400 naming `param` when the model's tokenizer cannot compile the grammar."""
    if grammar is None:
        return
    problem = engine.check_grammar(grammar)
    if problem is not None:
        raise APIError(400, f"{param} is not a usable grammar: {problem}", param=param)

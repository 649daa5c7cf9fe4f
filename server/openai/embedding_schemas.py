"""Pydantic models of the OpenAI embeddings API (POST /v1/embeddings), plus vLLM's truncation field."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from server.openai.schemas import RequestModel

# A string, strings, token ids, or lists of token ids (the model's own ids, as `/tokenize` gives them).
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(RequestModel):
    input: EmbeddingInput
    model: str | None = None  # None or "": the catalog's first embedding model
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None  # accepted and ignored (OpenAI's abuse monitoring)
    # vLLM's: keep the first k tokens of each input (-1: the model's window); None: a longer input is a 400
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)

    @property
    def single(self) -> bool:
        """Whether `input` is one input, a string or a list of ids (errors then name `input`)."""
        value = self.input
        return isinstance(value, str) or bool(value) and all(isinstance(v, int) for v in value)

    @property
    def inputs(self) -> list[str | list[int]]:
        """The inputs as a list: one string or one token id list becomes a list of one."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if self.single:
            return [[int(v) for v in value if isinstance(v, int)]]
        return [v for v in value if not isinstance(v, int)]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32 bytes


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

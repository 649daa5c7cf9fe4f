"""Structured output: `response_format` (json_object, json_schema) and `json_mode` through constrained
decoding (engine.grammar). The 135M model follows a schema only because the grammar makes it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import jsonschema
import openai
import pydantic

from tests.conftest import MODEL, AsyncClientFactory, Server
from tests.helpers import assert_openai_error

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person who lives in a big city, as JSON."}]
STORY = [{"role": "user", "content": "Tell me a story about a dragon."}]


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}


def _chat(client: openai.OpenAI, messages: list[dict[str, str]], **kw: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)  # type: ignore[arg-type]


def test_json_schema_output_parses_and_matches_greedy_and_sampled(client: openai.OpenAI) -> None:
    greedy = _chat(client, ASK, temperature=0, max_tokens=200, response_format=_schema_format(PERSON))
    sampled = _chat(
        client, ASK, temperature=1.0, seed=7, n=3, max_tokens=200, response_format=_schema_format(PERSON)
    )
    for choice in [*greedy.choices, *sampled.choices]:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_json_object_and_json_mode_give_an_object(client: openai.OpenAI) -> None:
    for extra in ({"response_format": {"type": "json_object"}}, {"extra_body": {"json_mode": True}}):
        r = _chat(client, ASK, temperature=0, max_tokens=200, **extra)
        assert r.choices[0].finish_reason == "stop", r
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_text_format_changes_nothing(client: openai.OpenAI) -> None:
    plain = _chat(client, STORY, temperature=0, max_tokens=20)
    text = _chat(client, STORY, temperature=0, max_tokens=20, response_format={"type": "text"})
    assert text.choices[0].message.content == plain.choices[0].message.content


def test_sdk_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    class Capital(pydantic.BaseModel):
        country: str
        capital: str
        is_largest_city: bool  # not a number: a 135M model may write digits until max_tokens

    messages = [{"role": "user", "content": "Give the capital of France as JSON."}]
    r = client.chat.completions.parse(
        model=MODEL,
        messages=messages,
        response_format=Capital,
        temperature=0,
        max_tokens=100,  # type: ignore[arg-type]
    )
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Capital)
    assert "Paris" in parsed.capital


def test_streamed_structured_output_equals_the_non_streamed(client: openai.OpenAI) -> None:
    fmt = _schema_format(PERSON)
    whole = _chat(client, ASK, temperature=0, max_tokens=200, response_format=fmt)
    stream = _chat(client, ASK, temperature=0, max_tokens=200, response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)


def test_constrained_rows_leave_the_others_in_the_batch_alone(aclient: AsyncClientFactory) -> None:
    async def main() -> tuple[str, list[str]]:
        async with aclient() as client:

            async def story() -> str:
                r = await client.chat.completions.create(
                    model=MODEL, messages=STORY, temperature=0, max_tokens=40
                )  # type: ignore[arg-type]
                return r.choices[0].message.content or ""

            async def person() -> str:
                r = await client.chat.completions.create(
                    model=MODEL,
                    messages=ASK,  # type: ignore[arg-type]
                    temperature=0.9,
                    max_tokens=200,
                    response_format=_schema_format(PERSON),  # type: ignore[arg-type]
                )
                return r.choices[0].message.content or ""

            solo = await story()
            mixed = await asyncio.gather(person(), story(), person(), story(), person())
            return solo, list(mixed)

    solo, mixed = asyncio.run(main())
    assert mixed[1] == solo and mixed[3] == solo
    for text in mixed[0::2]:
        jsonschema.validate(json.loads(text), PERSON)


def test_legacy_completions_take_response_format(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL,
        prompt="A JSON object describing a cat:",
        max_tokens=120,
        temperature=0,
        extra_body={
            "response_format": _schema_format(
                {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
            )
        },
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].text)["name"], str)


def test_bad_response_formats_are_400_naming_the_field(server: Server) -> None:
    url = f"{server.base_url}/chat/completions"
    base = {"model": MODEL, "messages": STORY, "max_tokens": 5}
    cases: list[tuple[Any, str]] = [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            "response_format",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}},
            "response_format.json_schema.name",
        ),
        ("json", "response_format"),
    ]
    for fmt, param in cases:
        r = httpx.post(url, json={**base, "response_format": fmt}, timeout=60)
        error = assert_openai_error(r, 400, param)
        assert "response_format" in error["message"] or param in error["message"], error
    r = httpx.post(url, json={**base, "json_mode": "yes"}, timeout=60)
    assert_openai_error(r, 400, "json_mode")

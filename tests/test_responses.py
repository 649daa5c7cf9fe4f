"""/v1/responses through the openai SDK on the session's server: the response object, its stream of
events, `max_output_tokens` -> incomplete, stored responses (retrieve, delete, input_items,
`previous_response_id`), a function-call round trip, `text.format`, and the 400s and 404s.

Answers are kept a few tokens long (the machine is shared); a json_schema or a forced call ends by
itself because the grammar allows nothing but the end after it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pydantic
import pytest

from tests.helpers import assert_openai_error
from tests.launch import MODEL, Server

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": WEATHER_PARAMS,
    "strict": True,
}
YES_NO = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
YES_NO_FORMAT = {"format": {"type": "json_schema", "name": "answer", "schema": YES_NO, "strict": True}}


def test_a_response_object_echoes_the_request_and_is_stored(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        input="Say hello.",
        instructions="Answer in one short sentence.",
        max_output_tokens=6,
        temperature=0,
        metadata={"case": "echo"},
        user="u-1",
    )
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete")
    assert r.model == MODEL and r.instructions == "Answer in one short sentence."
    assert r.metadata == {"case": "echo"} and r.user == "u-1" and r.max_output_tokens == 6
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and r.output_text
    assert r.usage is not None
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 6
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL, input="Tell me a long story about a dragon.", max_output_tokens=3, temperature=0
    )
    assert r.status == "incomplete"
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.output_tokens == 3


def test_streamed_events_follow_the_spec_and_match_the_stored_response(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Is the sky blue?", text=YES_NO_FORMAT, temperature=0, max_output_tokens=20
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    assert json.loads(final.output_text)["answer"] in ("yes", "no")
    completed = events[-1].response  # type: ignore[union-attr]
    stored = client.responses.retrieve(final.id)
    assert stored.model_dump(exclude={"output"}) == completed.model_dump(exclude={"output"})
    assert stored.output_text == final.output_text and stored.output[0].id == final.output[0].id


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada.", instructions="Be brief.", max_output_tokens=4, temperature=0
    )
    second = client.responses.create(
        model=MODEL,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=4,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.instructions is None
    assert first.usage is not None and second.usage is not None
    # The first turn (without its instructions), its answer, then the new question.
    assert second.usage.input_tokens > first.usage.output_tokens + 8
    assert second.usage.input_tokens_details.cached_tokens > 0  # the prefix cache kept the history
    items = client.responses.input_items.list(second.id)
    [item] = items.data
    assert item.type == "message" and item.role == "user"  # type: ignore[union-attr]
    assert item.content[0].text == "What is my name?"  # type: ignore[union-attr]


def test_a_function_call_round_trip(client: openai.OpenAI) -> None:
    ask = "What is the weather like in Paris?"
    first = client.responses.create(
        model=MODEL, input=ask, tools=[WEATHER], tool_choice="required", temperature=0, max_output_tokens=40
    )
    assert first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    # Stored: continue from the response; stateless: send the whole conversation back.
    stored = client.responses.create(
        model=MODEL, previous_response_id=first.id, input=[result], tools=[WEATHER], max_output_tokens=4
    )
    stateless = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": ask}, call.model_dump(exclude_none=True), result],  # type: ignore[list-item]
        tools=[WEATHER],
        max_output_tokens=4,
        store=False,
    )
    assert stored.status in ("completed", "incomplete") and stored.output
    assert stored.usage is not None and stateless.usage is not None
    assert stored.usage.input_tokens == stateless.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stateless.id)


def test_a_named_function_streams_its_arguments(client: openai.OpenAI) -> None:
    stream = client.responses.create(
        model=MODEL,
        input="Weather in Tokyo?",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
        max_output_tokens=40,
        stream=True,
    )
    events = list(stream)
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "function_call" and added.item.name == "get_weather"  # type: ignore[union-attr]
    assert done.item_id == added.item.id
    jsonschema.validate(json.loads(done.arguments), WEATHER_PARAMS)
    assert types[-1] == "response.completed"


class Population(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    population: int


def test_json_schema_through_the_sdk_parse(client: openai.OpenAI) -> None:
    r = client.responses.parse(
        model=MODEL,
        input="Name a big city and its population.",
        text_format=Population,
        temperature=0,
        max_output_tokens=60,
    )
    assert r.status == "completed"
    parsed = r.output_parsed
    assert isinstance(parsed, Population)
    assert len(str(abs(parsed.population))) <= 19  # integers are held to 64-bit numbers


def test_json_object_gives_an_object(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=MODEL,
        input="Give the name and age of a cat as JSON.",
        text={"format": {"type": "json_object"}},
        temperature=0,
        max_output_tokens=40,
    )
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_object"
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:  # cut by max_output_tokens (a slow machine keeps the answer short): an object still
        assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens"
        assert r.output_text.startswith("{")


def test_input_items_list_in_pages(client: openai.OpenAI) -> None:
    conversation: Any = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi."}]},
        {"role": "assistant", "content": "Hello!"},
        {"type": "message", "role": "user", "content": "Bye."},
    ]
    r = client.responses.create(model=MODEL, input=conversation, max_output_tokens=1)
    newest = client.responses.input_items.list(r.id, limit=2)
    assert newest.has_more and [i.content[0].text for i in newest.data] == ["Bye.", "Hello!"]  # type: ignore[union-attr]
    rest = client.responses.input_items.list(r.id, after=newest.last_id, order="desc")
    assert not rest.has_more and len(rest.data) == 2
    oldest = client.responses.input_items.list(r.id, order="asc", limit=1)
    assert oldest.data[0].role == "developer"  # type: ignore[union-attr]


def test_delete_then_404(client: openai.OpenAI) -> None:
    r = client.responses.create(model=MODEL, input="Hi.", max_output_tokens=1)
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_unknown_ids_are_404(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_unknown")
    body = {"model": MODEL, "input": "Hi.", "previous_response_id": "resp_unknown"}
    r = httpx.post(f"{server.base_url}/responses", json=body, timeout=60)
    assert_openai_error(r, 404, "previous_response_id", code="response_not_found")


IMAGE = {"type": "input_image", "image_url": "https://example.com/cat.png"}
BAD: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["x"]}]}, "tools.1.type"),
    ({"tools": [{"type": "function"}]}, "tools.0.name"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input.0.content.0",
    ),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input.0.type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
    ({"input": []}, "input"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": 100_000}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
]


@pytest.mark.parametrize(("fields", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_requests_are_400_naming_the_field(server: Server, fields: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "input": "Hi.", **fields}
    r = httpx.post(f"{server.base_url}/responses", json=body, timeout=60)
    assert_openai_error(r, 400, param)


def test_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi.")

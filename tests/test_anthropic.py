"""Anthropic's Messages API through the official `anthropic` SDK against the real server and model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL, Server
from tests.helpers import drop_stream, total, wait_idle

FRANCE: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
STORY: list[Any] = [{"role": "user", "content": "Write a long story about a cat."}]
# The SDK no longer offers `temperature` (new Claude models ignore it); Hearth still takes it.
GREEDY: dict[str, Any] = {"extra_body": {"temperature": 0}}
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=f"{server.url}/anthropic", api_key="x", max_retries=0, timeout=300
    ) as client:
        yield client


def _text(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_greedy_answer_names_paris(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(model=MODEL, max_tokens=30, **GREEDY, messages=FRANCE)
    assert r.id.startswith("msg_")
    assert r.type == "message" and r.role == "assistant" and r.model == MODEL
    assert [block.type for block in r.content] == ["text"]
    assert "Paris" in _text(r)
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert r.usage.output_tokens > 0


def test_usage_counts_are_real(claude: anthropic.Anthropic, tokenizer) -> None:  # type: ignore[no-untyped-def]
    r = claude.messages.create(model=MODEL, max_tokens=40, **GREEDY, messages=FRANCE)
    prompt = tokenizer.apply_chat_template(
        FRANCE, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert r.usage.input_tokens == len(prompt)
    # Ended on <|im_end|>: the text's tokens plus that eos.
    assert r.usage.output_tokens == len(tokenizer.encode(_text(r), add_special_tokens=False)) + 1


def test_same_answer_as_the_chat_route(claude: anthropic.Anthropic, client: openai.OpenAI) -> None:
    system = "You are a terse geography teacher."
    chat = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=30, messages=[{"role": "system", "content": system}, *FRANCE]
    )
    as_string = claude.messages.create(model=MODEL, max_tokens=30, **GREEDY, system=system, messages=FRANCE)
    as_blocks = claude.messages.create(
        model=MODEL, max_tokens=30, **GREEDY, system=[{"type": "text", "text": system}], messages=FRANCE
    )
    assert _text(as_string) == _text(as_blocks) == chat.choices[0].message.content
    assert chat.usage is not None
    assert as_string.usage.input_tokens == as_blocks.usage.input_tokens == chat.usage.prompt_tokens


def test_stop_sequence_cuts_the_text(claude: anthropic.Anthropic) -> None:
    full = _text(claude.messages.create(model=MODEL, max_tokens=30, **GREEDY, messages=FRANCE))
    word = "Paris"
    r = claude.messages.create(model=MODEL, max_tokens=30, **GREEDY, messages=FRANCE, stop_sequences=[word])
    assert r.stop_reason == "stop_sequence"
    assert r.stop_sequence == word
    assert _text(r) == full[: full.index(word)]


def test_max_tokens_ends_with_max_tokens(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(model=MODEL, max_tokens=5, messages=STORY)
    assert r.stop_reason == "max_tokens"
    assert r.usage.output_tokens == 5


def test_max_tokens_past_the_context_window_is_cut_to_it(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(model=MODEL, max_tokens=100_000, **GREEDY, messages=FRANCE)
    assert r.stop_reason == "end_turn" and "Paris" in _text(r)


def test_stream_reassembles_to_the_non_streamed_answer(claude: anthropic.Anthropic) -> None:
    plain = claude.messages.create(model=MODEL, max_tokens=60, **GREEDY, messages=STORY)
    with claude.messages.stream(model=MODEL, max_tokens=60, **GREEDY, messages=STORY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == _text(final) == _text(plain)
    assert final.id.startswith("msg_")
    assert final.stop_reason == plain.stop_reason == "max_tokens"
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens == 60


def test_streamed_stop_sequence(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL, max_tokens=30, **GREEDY, messages=FRANCE, stop_sequences=["Paris"]
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "Paris"
    assert "Paris" not in _text(final)


def _events(server: Server, path: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of every event of a raw stream."""
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = []
    for chunk in text.strip().split("\n\n"):
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return events


def test_raw_stream_has_named_events_in_order(server: Server) -> None:
    body = {"model": MODEL, "max_tokens": 20, "temperature": 0, "messages": FRANCE, "stream": True}
    events = _events(server, "/v1/messages", body)
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta", "ping"}
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["usage"]["input_tokens"] > 0
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] > 0


def test_client_that_drops_a_stream_frees_its_sequence(server: Server) -> None:
    aborted_before = total(server.stats(), "aborted")
    body = {"model": MODEL, "max_tokens": 1000, "messages": STORY, "stream": True}
    drop_stream(f"{server.url}/anthropic/v1/messages", body, "event: content_block_delta")
    assert total(wait_idle(server), "aborted") == aborted_before + 1


def test_tool_round_trip_history_is_answered(claude: anthropic.Anthropic) -> None:
    history: list[Any] = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "Sunny, 24 degrees."}],
        },
    ]
    r = claude.messages.create(model=MODEL, max_tokens=40, **GREEDY, tools=[WEATHER_TOOL], messages=history)
    assert r.stop_reason in {"end_turn", "max_tokens", "tool_use"}
    assert r.content
    bare = claude.messages.count_tokens(model=MODEL, messages=history[:1])
    full = claude.messages.count_tokens(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert full.input_tokens > bare.input_tokens + 10  # the call and its result are in the prompt
    assert r.usage.input_tokens == full.input_tokens


def test_tool_choice_none_is_accepted(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(
        model=MODEL,
        max_tokens=30,
        **GREEDY,
        messages=FRANCE,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "none"},
    )
    assert [block.type for block in r.content] == ["text"]


def test_prefill_is_continued(claude: anthropic.Anthropic) -> None:
    prefill = "The capital of France is"
    r = claude.messages.create(
        model=MODEL,
        max_tokens=10,
        **GREEDY,
        messages=[*FRANCE, {"role": "assistant", "content": prefill}],
    )
    assert "Paris" in _text(r)
    assert not _text(r).startswith(prefill)


def test_thinking_is_accepted(claude: anthropic.Anthropic) -> None:
    r = claude.messages.create(
        model=MODEL,
        max_tokens=2048,
        **GREEDY,
        messages=FRANCE,
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert "Paris" in _text(r)


def test_count_tokens_matches_usage(claude: anthropic.Anthropic, server: Server) -> None:
    counted = claude.messages.count_tokens(model=MODEL, messages=FRANCE, system="Be brief.")
    r = claude.messages.create(model=MODEL, max_tokens=5, messages=FRANCE, system="Be brief.")
    assert counted.input_tokens == r.usage.input_tokens
    alias = httpx.post(
        f"{server.url}/v1/messages/count_tokens",
        json={"model": MODEL, "messages": FRANCE, "system": "Be brief."},
    )
    assert alias.status_code == 200 and alias.json() == {"input_tokens": counted.input_tokens}


def test_v1_messages_alias(server: Server) -> None:
    body = {"model": "smollm2", "max_tokens": 30, "temperature": 0, "messages": FRANCE}
    r = httpx.post(
        f"{server.url}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}, timeout=120
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["type"] == "message" and data["model"] == MODEL
    assert "Paris" in data["content"][0]["text"]
    assert set(data["usage"]) == {"input_tokens", "output_tokens"}


@pytest.mark.parametrize(
    "choice", [{"type": "any", "disable_parallel_tool_use": True}, {"type": "tool", "name": "get_time"}]
)
def test_forced_tool_use_matches_its_schema(claude: anthropic.Anthropic, choice: dict[str, Any]) -> None:
    time_tool = {
        "name": "get_time",
        "description": "The time in a timezone.",
        "input_schema": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["timezone"],
            "additionalProperties": False,  # else a 135M model may add properties past max_tokens
        },
    }
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 60,
        **GREEDY,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [WEATHER_TOOL, time_tool],
        "tool_choice": choice,
    }
    r = claude.messages.create(**kwargs)
    assert r.stop_reason == "tool_use"
    [use] = [block for block in r.content if block.type == "tool_use"]
    if choice["type"] == "tool":
        assert use.name == "get_time" and use.input["timezone"] in {"UTC", "CET"}
    else:
        schema = {"get_weather": WEATHER_TOOL, "get_time": time_tool}[use.name]["input_schema"]
        jsonschema.validate(use.input, schema)
    with claude.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert [(b.name, b.input) for b in streamed.content if b.type == "tool_use"] == [(use.name, use.input)]

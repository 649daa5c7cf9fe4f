"""The Responses surface without a model: input items to chat messages, output pieces to output items
and their events (reasoning, text, calls), and the errors of items and tools."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.http.errors import APIError
from server.openai.responses.events import OutputItems
from server.openai.responses.schemas import ResponsesRequest
from server.openai.responses.translate import chat_messages, chat_request, input_items
from server.output.parser import Piece
from server.output.tool_parser import ParsedCall


def events(raw: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for event in raw:
        name, data = event.decode().strip().split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        out.append(payload)
    return out


def test_items_become_chat_turns() -> None:
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me see."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city": "Paris"}'},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"city": "Rome"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
            ],
        }
    )
    items = input_items(body)
    assert [i["id"][:3] for i in items] == ["msg", "msg", "rs_", "msg", "fc_", "fc_", "fco", "fco"]
    messages = chat_messages(items, body.instructions)
    assert [m["role"] for m in messages] == ["system", "system", "user", "assistant", "tool", "tool"]
    assert messages[0]["content"] == "Be brief." and messages[2]["content"] == "Weather?"
    assistant = messages[3]
    assert assistant["content"] == "Let me see." and [c["id"] for c in assistant["tool_calls"]] == [
        "c1",
        "c2",
    ]
    assert messages[5] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}
    chat = chat_request(body, items)
    assert len(chat.messages) == 6


def test_a_string_input_is_one_user_message() -> None:
    [item] = input_items(ResponsesRequest.model_validate({"model": "m", "input": "Hi."}))
    assert item["role"] == "user" and item["content"] == [{"type": "input_text", "text": "Hi."}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"type": "computer_call"}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input.0.content.0",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "w"}]}, "input.0.arguments"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools.0.name"),
    ],
)
def test_bad_items_name_their_field(fields: dict[str, Any], param: str) -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi.", **fields})
    with pytest.raises(APIError) as raised:
        chat_request(body, input_items(body))
    assert raised.value.status == 400 and raised.value.param == param


def test_pieces_become_items_and_events() -> None:
    items = OutputItems(parallel=False)
    raw = [
        *items.add(Piece("thinking", "Hmm.")),
        *items.add(Piece("thinking", " Paris.")),
        *items.add(Piece("text", "Calling.")),
        *items.add(Piece("tool", call=ParsedCall("w", {"city": "Paris"}))),
        *items.add(Piece("tool", call=ParsedCall("w", {"city": "Rome"}))),  # dropped: not parallel
        *items.close(),
    ]
    got = events(raw)
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert [e["type"] for e in got] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    reasoning, message, call = (item.model_dump() for item in items.items)
    assert reasoning["type"] == "reasoning" and reasoning["content"][0]["text"] == "Hmm. Paris."
    assert message["content"][0]["text"] == "Calling." and message["status"] == "completed"
    assert call["arguments"] == '{"city": "Paris"}' and call["status"] == "completed"
    assert got[-1]["item"] == call and got[-1]["output_index"] == 2


def test_a_cut_answer_leaves_its_last_item_incomplete() -> None:
    items = OutputItems()
    items.add(Piece("text", "Once upon"))
    done = events(items.close("incomplete"))
    assert done[-1]["item"]["status"] == "incomplete"

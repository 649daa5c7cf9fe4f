"""Anthropic stream events from scripted engine deltas: blocks, tool calls, pings, mid-stream errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine import Delta, FinishReason
from server.anthropic import stream as anthropic_stream
from server.anthropic.stream import StreamMeta, message_events

META = StreamMeta("msg_1", "m", 7, 50, frozenset({"get_weather"}))


def _delta(text: str, n: int, finish: FinishReason | None = None, **kw: Any) -> Delta:
    return Delta(text=text, token_ids=(n,), prompt_tokens=7, completion_tokens=n, finish_reason=finish, **kw)


def _events(deltas: list[Delta], first_after: float = 0.0) -> list[tuple[str, dict[str, Any]]]:
    async def rest() -> AsyncIterator[Delta]:
        for delta in deltas[1:]:
            yield delta

    async def first() -> Delta:
        await asyncio.sleep(first_after)
        return deltas[0]

    async def run() -> list[bytes]:
        return [item async for item in message_events(asyncio.create_task(first()), rest(), META)]

    out = []
    for raw in asyncio.run(run()):
        name, data = raw.decode().removesuffix("\n\n").split("\n")
        out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_text_answer() -> None:
    events = _events([_delta("Hel", 1), _delta("lo", 2), _delta("", 3, FinishReason.STOP)])
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert [e["delta"]["text"] for name, e in events if name == "content_block_delta"] == ["Hel", "lo"]
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 7, "output_tokens": 3},
    }


def test_stop_sequence_and_max_tokens() -> None:
    events = _events([_delta("a", 1), _delta("", 2, FinishReason.STOP, stop_text="END")])
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    events = _events([_delta("a", 49), _delta("b", 50, FinishReason.LENGTH)])
    assert events[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    events = _events([_delta("a", 9), _delta("b", 10, FinishReason.LENGTH)])  # the context window ran out
    assert events[-2][1]["delta"]["stop_reason"] == "model_context_window_exceeded"


def test_thinking_then_tool_call() -> None:
    chunks = [
        "<think>",
        "Weather?",
        "</think>\n<tool",
        '_call>{"name": "get_weather", ',
        '"arguments": {"city": "Paris"}}',
    ]
    deltas = [_delta(text, i + 1) for i, text in enumerate(chunks)]
    events = _events([*deltas, _delta("</tool_call>", 6, FinishReason.STOP)])
    body = [(name, data) for name, data in events if name.startswith("content_block")]
    assert body[0][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert body[1][1]["delta"] == {"type": "thinking_delta", "thinking": "Weather?"}
    assert body[2] == ("content_block_stop", {"type": "content_block_stop", "index": 0})
    start = body[3][1]
    assert start["index"] == 1 and start["content_block"]["type"] == "tool_use"
    assert start["content_block"]["name"] == "get_weather" and start["content_block"]["id"].startswith(
        "toolu_"
    )
    assert json.loads(body[4][1]["delta"]["partial_json"]) == {"city": "Paris"}
    assert body[5][1] == {"type": "content_block_stop", "index": 1}
    assert len(body) == 6
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_empty_answer_has_one_empty_text_block() -> None:
    events = _events([_delta("", 1, FinishReason.STOP)])
    blocks = [data for name, data in events if name.startswith("content_block")]
    assert blocks == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_stop", "index": 0},
    ]


def test_error_after_the_start_is_an_error_event() -> None:
    events = _events([_delta("Hi", 1), _delta("", 2, FinishReason.ERROR, error="boom")])
    name, data = events[-1]
    assert name == "error"
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "boom" in data["error"]["message"]
    assert "message_stop" not in [name for name, _ in events]


def test_pings_while_waiting_for_the_first_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anthropic_stream, "PING_INTERVAL", 0.05)
    events = _events([_delta("Hi", 1, FinishReason.STOP)], first_after=0.3)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[1:4] == ["ping", "ping", "ping"]
    assert names[-1] == "message_stop"

"""Tools on /v1/chat/completions through the openai SDK: forced calls (constrained decoding) that parse
and match their schema even with the 135M model, named choices, streamed calls as the SDK accumulates
them, `parallel_tool_calls`, `tool_choice: none`, tool results sent back, and the 400s."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import llguidance
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from engine import Delta, FinishReason
from server.generation.respond import ResponseMeta
from server.openai.chat_render import ChatRender, OutputShape
from server.output.tool_grammar import Thinking, ToolSpec, answer_grammar
from server.output.tool_prompt import template_input
from tests.helpers import assert_openai_error
from tests.launch import MODEL, Server

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_PARAMS,
    },
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a timezone", "parameters": TIME_PARAMS},
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
FORCED: dict[str, Any] = {
    "model": MODEL,
    "messages": ASK,
    "tools": [WEATHER, TIME],
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "temperature": 0,
    "max_tokens": 60,
}


def _calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()]


def test_required_call_parses_and_matches_its_schema(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(**FORCED)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    arguments = json.loads(call.function.arguments)
    schema = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}[call.function.name]
    jsonschema.validate(arguments, schema)


def test_tool_result_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(**FORCED).choices[0].message
    [call] = first.tool_calls or []
    history = [
        *ASK,
        first.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny", "celsius": 24})},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER, TIME], temperature=0, max_tokens=30
    )
    answer = r.choices[0]
    assert answer.finish_reason in {"stop", "length"}
    assert answer.message.content and not answer.message.tool_calls
    # The call and its result are in the prompt the template rendered.
    assert r.usage is not None and r.usage.prompt_tokens > 100


def test_named_choice_calls_that_function(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(**{**FORCED, "tool_choice": named})
    assert r.choices[0].finish_reason == "tool_calls"
    [(name, arguments)] = _calls(r.choices[0].message)
    assert name == "get_time"
    jsonschema.validate(arguments, TIME_PARAMS)


def test_streamed_calls_accumulate_to_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(**FORCED).choices[0]
    with client.chat.completions.stream(**FORCED) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert _calls(streamed.message) == _calls(whole.message)
    assert [c.id for c in streamed.message.tool_calls or []][0].startswith("call_")


def test_tool_choice_none_gives_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(**{**FORCED, "tool_choice": "none", "max_tokens": 12})
    assert r.choices[0].finish_reason in {"stop", "length"}
    assert not r.choices[0].message.tool_calls
    assert r.choices[0].message.content


def test_auto_with_tools_answers(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(**{**FORCED, "tool_choice": "auto", "max_tokens": 12})
    choice = r.choices[0]
    assert choice.finish_reason in {"stop", "length", "tool_calls"}
    assert len(choice.message.tool_calls or []) <= 1  # parallel_tool_calls: false


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        (
            {"tools": [WEATHER, {"type": "function", "function": {"name": "bad name!"}}]},
            "tools.1.function.name",
        ),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools.0.type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools.0.function.parameters",
        ),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages.0.tool_calls.0.function",
        ),
    ],
)
def test_bad_tools_are_400(server: Server, patch: dict[str, Any], param: str) -> None:
    body = {k: v for k, v in {**FORCED, **patch}.items() if v is not None}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert_openai_error(r, 400, param)


def test_a_schema_that_cannot_be_enforced_is_400(server: Server) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "minProperties": "x"}},
    }
    body = {**FORCED, "tools": [bad]}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert_openai_error(r, 400, "tools")


# Without a server: the grammars compile, the fallback prompt, the stream shape the SDK accumulates.


@pytest.mark.parametrize(
    "thinking",
    [None, Thinking(opened=True), Thinking(opened=True, budget=16), Thinking(opened=False, budget=4)],
)
@pytest.mark.parametrize("parallel", [True, False])
def test_grammars_compile(thinking: Thinking | None, parallel: bool) -> None:
    tools = [ToolSpec("get_weather", WEATHER_PARAMS), ToolSpec("get_time", TIME_PARAMS), ToolSpec("ping")]
    spec = answer_grammar(thinking, tools, parallel)
    assert spec is not None and spec.kind == "lark"
    assert llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", spec.source)) == ""


def test_tools_keep_their_own_defs() -> None:
    """Two tools whose schemas both define `#/$defs/Node` (as pydantic writes them), one recursive."""
    node = {
        "type": "object",
        "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
        "required": ["next"],
    }
    walk = {"type": "object", "properties": {"head": {"$ref": "#/$defs/Node"}}, "$defs": {"Node": node}}
    other = {
        "type": "object",
        "properties": {"x": {"$ref": "#/$defs/Node"}},
        "$defs": {"Node": {"type": "string"}},
    }
    spec = answer_grammar(None, [ToolSpec("walk", walk), ToolSpec("other", other)], parallel=False)
    assert spec is not None
    assert llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", spec.source)) == ""
    assert '"$ref": "#/$defs/tool1/$defs/Node"' in spec.source


def test_no_grammar_without_a_forced_call_or_budget() -> None:
    assert answer_grammar(None) is None
    assert answer_grammar(Thinking(opened=True)) is None


class _Tokenizer:
    chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)


def test_template_without_tools_gets_them_in_the_system_prompt() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "warm"},
    ]
    messages, kwargs = template_input(_Tokenizer(), history, [WEATHER])
    assert kwargs == {}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '"name": "get_weather"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>'
    assert (
        messages[3]["content"]
        == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"
    )


def _render(parallel: bool = True) -> ChatRender:
    meta = ResponseMeta("chatcmpl-1", 1, "m", "fp_test")
    return ChatRender(meta, False, OutputShape(_Tokenizer(), frozenset({"get_weather"}), parallel))


def test_stream_chunks_accumulate_in_the_sdk() -> None:
    pieces = [
        "<think>Need weather</th",
        "ink>\n<tool_call>\n",
        '{"name": "get_weather", "arguments": ',
        '{"city": "Paris"}}\n</tool_call>',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>',
    ]
    render = _render()
    state = ChatCompletionStreamState()
    events = [e for e in render.opening(1)]
    for i, text in enumerate(pieces):
        last = i == len(pieces) - 1
        delta = Delta(text, (i,), 5, i + 1, finish_reason=FinishReason.STOP if last else None)
        events += render.events(delta)
    for event in events:
        chunk = ChatCompletionChunk.model_validate_json(event.decode().removeprefix("data: "))
        list(state.handle_chunk(chunk))
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert final.message.content is None or final.message.content == ""
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls or []] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    reasoning = [json.loads(e.decode()[6:])["choices"][0]["delta"].get("reasoning_content") for e in events]
    assert "".join(r for r in reasoning if r) == "Need weather"


def test_without_parallel_calls_only_the_first_is_kept() -> None:
    render = _render(parallel=False)
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' * 2
    events = list(render.events(Delta(text, (1,), 5, 1, finish_reason=FinishReason.STOP)))
    entries = [json.loads(e.decode()[6:])["choices"][0]["delta"].get("tool_calls") for e in events]
    assert [entry[0]["index"] for entry in entries if entry] == [0, 0]

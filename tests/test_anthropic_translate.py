"""Anthropic requests as chat-template messages, for templates with and without tool support."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.anthropic.schemas import CountTokensRequest, Message
from server.anthropic.translate import chat_messages, render_prompt, template_knows_tools
from server.http.errors import APIError
from server.output.tool_prompt import with_tools_prompt

HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
            {"type": "text", "text": "And tomorrow?"},
        ],
    },
]
TOOLS = [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}]

# A minimal tool-aware template (the shape of Qwen's and Hermes').
TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}|{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% if m.tool_call_id %}[for {{ m.tool_call_id }}]{% endif %}|{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _messages(raw: list[dict[str, Any]]) -> list[Message]:
    return [Message.model_validate(m) for m in raw]


def test_native_tool_messages() -> None:
    assert chat_messages("Be brief.", _messages(HISTORY), native_tools=True) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_tool_messages_as_text() -> None:
    assert chat_messages(None, _messages(HISTORY), native_tools=False) == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        },
        {"role": "user", "content": "<tool_response>\nSunny\n</tool_response>\nAnd tomorrow?"},
    ]


def test_error_results_are_marked() -> None:
    raw = [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": "no", "is_error": True}],
        }
    ]
    assert chat_messages(None, _messages(raw), native_tools=True)[0]["content"] == "Error: no"


def test_tool_use_in_a_user_message_is_refused() -> None:
    raw = [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]
    with pytest.raises(APIError) as e:
        chat_messages(None, _messages(raw), native_tools=True)
    assert e.value.status == 400 and e.value.param == "messages.0.content.0"


def test_rendered_with_the_models_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert not template_knows_tools(tokenizer)
    body = CountTokensRequest.model_validate({"model": "m", "messages": HISTORY, "tools": TOOLS})
    # A template without tools support gets them described in a system prompt.
    messages = with_tools_prompt(
        chat_messages(None, body.messages, native_tools=False),
        [tool.to_openai() for tool in body.tools or ()],
    )
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = tokenizer.decode(render_prompt(tokenizer, body))
    assert text == expected
    assert text.startswith("<|im_start|>system\n# Tools") and '"name": "get_weather"' in text


def test_rendered_with_a_tool_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    tool_tokenizer = copy.deepcopy(tokenizer)
    tool_tokenizer.chat_template = TOOL_TEMPLATE
    assert template_knows_tools(tool_tokenizer)
    body = CountTokensRequest.model_validate({"model": "m", "messages": HISTORY, "tools": TOOLS})
    text = tool_tokenizer.decode(render_prompt(tool_tokenizer, body))
    assert text.startswith("TOOLS:get_weather;|")
    assert '<assistant>Checking.[call get_weather {"city": "Paris"}]|' in text
    assert text.endswith("<tool>Sunny[for toolu_1]|<user>And tomorrow?|<assistant>")
    none = CountTokensRequest.model_validate(
        {"model": "m", "messages": HISTORY, "tools": TOOLS, "tool_choice": {"type": "none"}}
    )
    assert "TOOLS:" not in tool_tokenizer.decode(render_prompt(tool_tokenizer, none))


def test_prefill_is_appended_after_the_generation_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    raw = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello,"}]},
    ]
    body = CountTokensRequest.model_validate({"model": "m", "messages": raw})
    ids = render_prompt(tokenizer, body)
    head = tokenizer.apply_chat_template(
        raw[:1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids[: len(head)] == list(head)
    assert tokenizer.decode(ids[len(head) :]) == "Hello,"

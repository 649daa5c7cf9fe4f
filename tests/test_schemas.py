"""Request validation in `server.openai.schemas`: ranges, unions, defaults, and the response shapes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.http.errors import validation_error_to_api
from server.openai.schemas import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
    completion_id,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


def rejected(body: dict[str, Any]) -> tuple[str | None, str]:
    """The (param, message) of the 400 a body gets."""
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = validation_error_to_api(info.value)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error.param, error.message


def test_minimal_request_has_openai_defaults() -> None:
    body = chat()
    assert body.max_new_tokens is None
    assert body.stop_strings == ()
    assert body.include_usage is False
    assert body.stream is None and body.temperature is None and body.n is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_completion_tokens", 0),
        ("n", 0),
        ("top_k", -2),
        ("top_logprobs", 21),
        ("logit_bias", {"abc": 1}),
        ("logit_bias", {"12": 101}),
        ("logit_bias", {"-3": 1}),
        ("ignore_eos", "yes"),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -2.5),
        ("temperature", "0.5"),
        ("max_tokens", 1.5),
        ("stream", "yes"),
        ("seed", 2**64),
    ],
)
def test_out_of_range_or_wrong_type_names_the_field(field: str, value: Any) -> None:
    param, _ = rejected({"model": "m", "messages": USER, field: value})
    assert param == field


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 2),
        ("top_p", 1),
        ("frequency_penalty", -2),
        ("seed", -1),
        ("top_k", -1),
        ("logit_bias", {"42": -100, "7": 100.0}),
    ],
)
def test_range_bounds_are_accepted(field: str, value: Any) -> None:
    assert getattr(chat(**{field: value}), field) == value


def test_top_logprobs_needs_logprobs() -> None:
    assert chat(logprobs=True, top_logprobs=20).top_logprobs == 20
    param, message = rejected({"model": "m", "messages": USER, "top_logprobs": 2})
    assert param == "top_logprobs" and "logprobs" in message
    assert (
        rejected({"model": "m", "messages": USER, "logprobs": False, "top_logprobs": 2})[0] == "top_logprobs"
    )


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=5).max_new_tokens == 5
    assert chat(max_tokens=5, max_completion_tokens=7).max_new_tokens == 7


def test_stop_string_or_list_of_at_most_four() -> None:
    assert chat(stop="x").stop_strings == ("x",)
    assert chat(stop=["a", "b", "c", "d"]).stop_strings == ("a", "b", "c", "d")
    param, message = rejected({"model": "m", "messages": USER, "stop": ["a", "b", "c", "d", "e"]})
    assert param == "stop"
    assert "at most 4" in message


def test_empty_stop_string_is_rejected() -> None:
    assert rejected({"model": "m", "messages": USER, "stop": ["a", ""]})[0] == "stop.1"
    assert rejected({"model": "m", "messages": USER, "stop": ""})[0] == "stop"


def test_missing_fields_and_empty_messages() -> None:
    param, message = rejected({"messages": USER})
    assert param == "model"
    assert message == "Missing required parameter: 'model'."
    assert rejected({"model": "m", "messages": []})[0] == "messages"


def test_bad_role_names_its_dotted_path() -> None:
    body = {"model": "m", "messages": [*USER, {"role": "robot", "content": "x"}]}
    assert rejected(body)[0] == "messages.1.role"


def test_content_parts_must_be_text() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert rejected(body)[0] == "messages.0.content.0.type"
    assert rejected({"model": "m", "messages": [{"role": "user", "content": 5}]})[0] == "messages.0.content"


def test_text_parts_are_joined_for_the_template() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = chat(messages=[{"role": "user", "content": parts, "name": "bob"}])
    assert body.messages[0].to_template() == {"role": "user", "content": "a\nb", "name": "bob"}


def test_content_may_be_null_only_for_assistant_tool_calls() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]}]
    messages.append({"role": "tool", "content": "42", "tool_call_id": "call_1"})
    template = chat(messages=messages).messages[1].to_template()
    assert template["content"] is None
    # JSON arguments reach the template as an object (templates write `arguments | tojson`).
    assert template["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}
    assert rejected({"model": "m", "messages": [{"role": "user"}]})[0] == "messages.0.content"
    assert rejected({"model": "m", "messages": [{"role": "assistant", "content": None}]})[0] == (
        "messages.0.content"
    )


def test_developer_and_tool_roles_are_accepted() -> None:
    messages = [{"role": "developer", "content": "be brief"}, {"role": "tool", "content": "x"}]
    assert [m.role for m in chat(messages=messages).messages] == ["developer", "tool"]


def test_unknown_fields_are_kept_aside_and_accepted_fields_ignored() -> None:
    body = chat(foo=1, user="u", metadata={"k": "v"}, store=False, sess_id="s", retries=3)
    assert body.model_extra == {"foo": 1}


def test_enable_search_true_is_rejected() -> None:
    assert chat(enable_search=False).enable_search is False
    param, message = rejected({"model": "m", "messages": USER, "enable_search": True})
    assert param == "enable_search"
    assert "search" in message


def test_stream_options_include_usage() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage is True


def test_usage_totals_and_details() -> None:
    usage = Usage.of(prompt_tokens=7, completion_tokens=3, cached_tokens=2).model_dump()
    assert usage == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_optional_response_fields_are_omitted_not_null() -> None:
    assert ResponseMessage(content="x").model_dump() == {"role": "assistant", "content": "x"}
    assert DeltaMessage().model_dump() == {}
    chunk = ChatCompletionChunk(
        id="chatcmpl-1", created=0, model="m", choices=[ChunkChoice(index=0, delta=DeltaMessage(content="a"))]
    ).model_dump()
    assert "usage" not in chunk
    assert chunk["choices"][0] == {
        "index": 0,
        "delta": {"content": "a"},
        "logprobs": None,
        "finish_reason": None,
    }


def test_completion_ids() -> None:
    assert completion_id("ab12") == "chatcmpl-ab12"
    generated = completion_id()
    assert generated.startswith("chatcmpl-") and len(generated) == len("chatcmpl-") + 24

"""The legacy completions API (POST /v1/completions) through the openai SDK and raw HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server

PROMPT = "The capital of France is"


def _complete(client: openai.OpenAI, **kw: Any) -> Any:
    return client.completions.create(model=MODEL, **kw)


def test_plain_completion_shape_and_usage(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    r = _complete(client, prompt=PROMPT, temperature=0, max_tokens=5)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.model == MODEL
    [choice] = r.choices
    assert choice.index == 0 and choice.text and choice.logprobs is None
    assert "Paris" in choice.text
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = _complete(client, prompt="Once upon a time", extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16
    assert r.choices[0].finish_reason == "length"


def test_token_id_prompt_equals_text_prompt(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = _complete(client, prompt=PROMPT, temperature=0, max_tokens=4)
    ids = _complete(client, prompt=tokenizer(PROMPT)["input_ids"], temperature=0, max_tokens=4)
    one = _complete(client, prompt=[PROMPT], temperature=0, max_tokens=4)
    assert ids.choices[0].text == text.choices[0].text == one.choices[0].text


def test_stream_reassembles_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    plain = _complete(client, prompt=PROMPT, temperature=0, max_tokens=8)
    chunks = list(
        _complete(
            client,
            prompt=PROMPT,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in with_choices) == plain.choices[0].text
    assert with_choices[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    plain = _complete(client, prompt=PROMPT, temperature=0, max_tokens=4)
    echoed = _complete(client, prompt=PROMPT, temperature=0, max_tokens=4, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    streamed = _complete(client, prompt=PROMPT, temperature=0, max_tokens=4, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == echoed.choices[0].text


def test_logprobs_lists_are_parallel(client: openai.OpenAI) -> None:
    r = _complete(client, prompt=PROMPT, temperature=0, max_tokens=6, logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.text_offset[0] == len(PROMPT)
    assert PROMPT + "".join(lp.tokens) == r.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and 1 <= len(top) <= 3
        assert top[token] == value == max(top.values())  # greedy
    streamed = _complete(
        client, prompt=PROMPT, temperature=0, max_tokens=6, logprobs=2, echo=True, stream=True
    )
    offsets = [
        o for c in streamed if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset
    ]
    assert offsets == lp.text_offset


def test_n_choices(client: openai.OpenAI) -> None:
    r = _complete(client, prompt=PROMPT, temperature=1, max_tokens=3, n=2, seed=5)
    assert [c.index for c in r.choices] == [0, 1]
    again = _complete(client, prompt=PROMPT, temperature=1, max_tokens=3, n=2, seed=5)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({}, "prompt"),
        ({"prompt": PROMPT, "suffix": "x"}, "suffix"),
        ({"prompt": PROMPT, "logprobs": 6}, "logprobs"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [10**7]}, "prompt"),
        ({"prompt": PROMPT, "n": 9}, "n"),
        ({"prompt": PROMPT, "best_of": 3}, "best_of"),
        ({"prompt": PROMPT, "logit_bias": {"10000000": 1}}, "logit_bias"),
        ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
        ({"prompt": PROMPT, "max_tokens": 100_000}, "max_tokens"),
    ],
)
def test_bad_inputs_are_400s_naming_the_field(server: Server, fields: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.base_url}/completions", json={"model": MODEL, **fields}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"

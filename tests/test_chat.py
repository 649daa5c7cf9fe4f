"""Chat completions through the official openai SDK against the real server and model."""

from __future__ import annotations

import openai

from tests.conftest import MODEL

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_greedy_answer_names_paris(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=30)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"


def test_alias_resolves_to_catalog_id(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=FRANCE, temperature=0, max_tokens=3)
    assert r.model == MODEL


def test_usage_counts_are_real(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    prompt = tokenizer.apply_chat_template(
        FRANCE, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].finish_reason == "stop"
    # The answer ended on <|im_end|>: every generated id is the text's tokens plus that eos.
    text_ids = tokenizer.encode(r.choices[0].message.content, add_special_tokens=False)
    assert r.usage.completion_tokens == len(text_ids) + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a cat."}], max_tokens=5
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_max_completion_tokens_wins_over_max_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a cat."}],
        max_tokens=50,
        max_completion_tokens=3,
        temperature=0,
    )
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_stop_string_never_reaches_the_output(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=30)
    full = base.choices[0].message.content or ""
    assert "Paris" in full
    r = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, stop=["Paris"]
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.index("Paris")]
    # a stop string that spans several tokens, given as a list with others
    r = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=30, stop=["xyz", "of France"]
    )
    assert "of France" not in (r.choices[0].message.content or "")
    assert r.choices[0].message.content == full[: full.index("of France")]


def test_list_content_and_system_message(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
        ],
        temperature=0,
        max_tokens=10,
    )
    assert "Paris" in (r.choices[0].message.content or "")


def test_request_id_header(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=FRANCE, max_tokens=2)
    rid = raw.headers["x-request-id"]
    assert rid.startswith("req_") and len(rid) == 4 + 24

"""Per-request sampling through the chat API: seeds, logit_bias, penalties, logprobs, n."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL, AsyncClientFactory, Server

POEM = [{"role": "user", "content": "Write a poem about the sea."}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
CAT = [{"role": "user", "content": "Repeat the word 'cat' ten times."}]


def _chat(client: openai.OpenAI, messages: list[dict[str, str]], **kw: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)  # type: ignore[arg-type]


def test_same_seed_same_output_also_inside_a_batch(aclient: AsyncClientFactory) -> None:
    async def main() -> tuple[str, list[str]]:
        async with aclient() as client:

            async def poem(seed: int | None, temperature: float = 1.0) -> str:
                r = await client.chat.completions.create(
                    model=MODEL, messages=POEM, temperature=temperature, max_tokens=12, seed=seed
                )
                return r.choices[0].message.content or ""

            solo = await poem(1234)
            batch = await asyncio.gather(poem(1234), poem(None), poem(99), poem(1234), poem(None, 0.0))
            return solo, list(batch)

    solo, batch = asyncio.run(main())
    assert batch[0] == solo and batch[3] == solo
    assert batch[2] != solo


def test_strong_negative_logit_bias_changes_the_greedy_first_token(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    plain = _chat(client, FRANCE, temperature=0, max_tokens=3, logprobs=True)
    first = plain.choices[0].logprobs.content[0]
    first_id = tokenizer.encode(first.token, add_special_tokens=False)[0]
    biased = _chat(
        client, FRANCE, temperature=0, max_tokens=3, logprobs=True, logit_bias={str(first_id): -100}
    )
    assert biased.choices[0].logprobs.content[0].token != first.token


def test_logit_bias_plus_100_forces_a_token(client: openai.OpenAI, tokenizer) -> None:  # type: ignore[no-untyped-def]
    [zebra] = tokenizer.encode(" zebra", add_special_tokens=False)
    r = _chat(client, FRANCE, temperature=0.7, max_tokens=4, logit_bias={str(zebra): 100})
    assert r.choices[0].message.content == " zebra" * 4


@pytest.mark.parametrize(
    "penalty", [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 1.5}]
)
def test_penalties_change_a_repetitive_greedy_output(
    client: openai.OpenAI, penalty: dict[str, float]
) -> None:
    plain = _chat(client, CAT, temperature=0, max_tokens=12).choices[0].message.content
    penalized = (
        _chat(client, CAT, temperature=0, max_tokens=12, extra_body=penalty).choices[0].message.content
    )

    def cats(text: str) -> int:
        return len(re.findall(r"\bcat\b", text))

    assert cats(plain) > cats(penalized)


def test_top_k_1_and_min_p_1_are_greedy(client: openai.OpenAI) -> None:
    """Each keeps only the most likely tokens: every token drawn at temperature 1 is one greedy could
    take (its logprob is the step's highest), and without a tie on the way the text is greedy's. The
    default model's logits are float32 (its int8 lm_head keeps them so); when they were rounded to
    bfloat16 the poem's first token was an exact tie ("The" and "In", both -1.0370), where greedy's
    argmax takes the lower id and min_p 1.0 keeps both and draws one."""
    kw: dict[str, Any] = {"max_tokens": 8, "logprobs": True, "top_logprobs": 2}
    for messages in (POEM, FRANCE):
        greedy = _chat(client, messages, temperature=0, **kw)
        top_k = _chat(client, messages, temperature=1, extra_body={"top_k": 1}, **kw)
        min_p = _chat(client, messages, temperature=1, extra_body={"min_p": 1.0}, **kw)
        for answer in (greedy, top_k, min_p):
            steps = answer.choices[0].logprobs.content
            assert len(steps) == answer.usage.completion_tokens > 0
            assert [step.logprob for step in steps] == [step.top_logprobs[0].logprob for step in steps]
        # Where greedy's step leads by >= 0.01 (no tie a rounding could flip), all three take its
        # token: FRANCE's first ("The" by ~0.06 over "L") and on.
        lead = [
            s.top_logprobs[0].logprob - s.top_logprobs[1].logprob for s in greedy.choices[0].logprobs.content
        ]
        clear = next((i for i, margin in enumerate(lead) if margin < 0.01), len(lead))
        assert clear >= (1 if messages is FRANCE else 0)
        want = [s.token for s in greedy.choices[0].logprobs.content[:clear]]
        for answer in (top_k, min_p):
            assert [s.token for s in answer.choices[0].logprobs.content[:clear]] == want


def test_logprobs_are_consistent_and_streamed_equal_non_streamed(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"temperature": 0, "max_tokens": 8, "logprobs": True, "top_logprobs": 5}
    r = _chat(client, POEM, **kw)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert entry.logprob == tops[0]  # greedy took the most likely token
        assert entry.logprob <= 0 and all(t <= 0 for t in tops)
        assert bytes(entry.bytes or []).decode() == entry.token
    assert "".join(e.token for e in content) == r.choices[0].message.content

    streamed = []
    for chunk in _chat(client, POEM, stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed.extend(chunk.choices[0].logprobs.content or [])
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]


def test_no_logprobs_unless_asked(client: openai.OpenAI) -> None:
    assert _chat(client, FRANCE, max_tokens=2).choices[0].logprobs is None


def test_n_choices_with_usage_summed(client: openai.OpenAI) -> None:
    r = _chat(client, POEM, temperature=1, max_tokens=6, n=3, logprobs=True)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    single = _chat(client, POEM, max_tokens=1)
    assert r.usage.prompt_tokens == single.usage.prompt_tokens


def test_n_choices_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        _chat(
            client,
            POEM,
            temperature=1,
            max_tokens=5,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {i: "" for i in range(3)}
    roles, finishes = set(), set()
    for chunk in chunks[:-1]:
        [choice] = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.delta.role == "assistant":
            roles.add(choice.index)
        if choice.finish_reason is not None:
            finishes.add(choice.index)
    assert roles == finishes == {0, 1, 2}
    assert all(texts.values())
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens <= 15


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 9}, "n"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"logit_bias": {"x": 5}}, "logit_bias"),
        ({"logit_bias": {"5": -101}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"top_k": -2}, "top_k"),
    ],
)
def test_bad_sampling_fields_are_400s_naming_the_field(
    server: Server, fields: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 2, **fields}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param

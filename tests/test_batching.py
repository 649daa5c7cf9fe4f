"""Continuous batching seen from outside: concurrent requests, each with its own settings."""

from __future__ import annotations

import asyncio
import uuid

import openai

from tests.conftest import MODEL, AsyncClientFactory

QUESTIONS = [
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Explain gravity to a child.",
    "List three fruits.",
    "What is 2+2?",
    "Tell me a story about a dragon.",
    "How do computers work?",
    "Describe a sunset in detail.",
]


async def _stream(
    client: openai.AsyncOpenAI, question: str, temperature: float, max_tokens: int
) -> tuple[str, str]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        temperature=temperature,
        max_tokens=max_tokens,
        stream=True,
    )
    text, finish = "", ""
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_eight_concurrent_streams_match_their_solo_runs(aclient: AsyncClientFactory) -> None:
    settings = [(q, 0.0 if i % 2 == 0 else 0.9, 24 + 8 * i) for i, q in enumerate(QUESTIONS)]

    async def main() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        async with aclient() as client:
            solo = [await _stream(client, q, t, m) for q, t, m in settings if t == 0.0]
            together = await asyncio.gather(*[_stream(client, q, t, m) for q, t, m in settings])
        return solo, list(together)

    solo, together = asyncio.run(main())
    for text, finish in together:
        assert finish in ("stop", "length")
        assert text
    greedy_together = [r for (q, t, m), r in zip(settings, together, strict=True) if t == 0.0]
    assert greedy_together == solo


def test_a_burst_sharing_a_long_system_prompt_computes_it_once(aclient: AsyncClientFactory) -> None:
    # A system prompt no slot holds yet (the nonce), long enough for the newcomers to wait for it.
    nonce = uuid.uuid4().hex
    system = f"Session {nonce}. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(40))

    async def ask(client: openai.AsyncOpenAI, question: str) -> tuple[str, int, int]:
        r = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            temperature=0,
            max_tokens=12,
        )
        usage = r.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached = usage.prompt_tokens_details.cached_tokens or 0
        return r.choices[0].message.content or "", usage.prompt_tokens, cached

    async def main() -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        async with aclient() as client:
            burst = await asyncio.gather(*[ask(client, q) for q in QUESTIONS[:4]])
            solo = [await ask(client, q) for q in QUESTIONS[:4]]
        return list(burst), solo

    burst, solo = asyncio.run(main())
    assert [text for text, _, _ in burst] == [text for text, _, _ in solo]
    prompt_tokens = burst[0][1]
    copied = [cached for _, _, cached in burst if cached >= prompt_tokens - 30]
    assert len(copied) >= 3, burst  # all but the first copied the system prompt's KV

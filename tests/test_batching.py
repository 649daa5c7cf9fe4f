"""Continuous batching seen from outside: concurrent requests, each with its own settings."""

from __future__ import annotations

import asyncio

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

"""The soak's warm-up (`scripts/soak.py`): the server's one-time costs paid before its baseline.

A server's memory and threads grow the first time it meets a shape of work and then stay: worker
threads of its pools (prompt rendering, generation) grow on demand, and the engine records a decode
trace the first time a step has a new (rows, kv length) bucket (engine/model/decode_graphs.py:
rows 1, 2, 4, ..., kv lengths 256, 512, ...). A load meets new shapes late, e.g. as its
concurrency drains from C to 1 at its end; growth that is a one-time cost would then be counted
as a leak. So before the thread count and the RSS baseline are taken, the warm-up:

- sends bursts of concurrent requests (prompt rendering, then generation), so the pools are full;
- takes the engine through every concurrency k = 1..C at a short and at a long context: k requests
  started together, decoding together for several steps. The long context reaches the deepest kv
  bucket the load can: its longest prompt plus the longest answer it asks for (the hung-up streams').
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from soak_requests import HANG_UP_TOKENS, PROMPTS, _json, chat_body, fault_error

BURST = 32  # concurrent requests per burst (at least the concurrency)
DECODE_STEPS = 12  # tokens per warm-up request: enough steps decoding together


async def prompt_tokens(client: httpx.AsyncClient, model: str, prompt: str) -> int:
    """The prompt's tokens as a chat request (through the chat template), from count_tokens."""
    r = await client.post("/anthropic/v1/messages/count_tokens", json=chat_body(model, prompt, 1))
    r.raise_for_status()
    return int(r.json()["input_tokens"])


async def long_prompt(client: httpx.AsyncClient, model: str, deepest: int) -> str:
    """A prompt whose answer of `DECODE_STEPS` tokens ends near position `deepest`: the load's
    prompts repeated, measured."""
    text = " ".join(PROMPTS)
    base, once = await prompt_tokens(client, model, ""), await prompt_tokens(client, model, text)
    per_copy = max(1, once - base)
    copies = max(1, (deepest - DECODE_STEPS - base) // per_copy)
    return " ".join([text] * copies)


async def fill_pools(client: httpx.AsyncClient, model: str, concurrency: int) -> None:
    """Bursts of concurrent requests: prompt rendering (count_tokens), then generation."""
    width = max(concurrency, BURST)
    for _ in range(2):
        prompts = PROMPTS * (width // len(PROMPTS) + 1)
        count = "/anthropic/v1/messages/count_tokens"
        await asyncio.gather(*(client.post(count, json=chat_body(model, p, 1)) for p in prompts))
        bodies = [chat_body(model, p, 2, stream=i % 2 == 1) for i, p in enumerate(prompts[:width])]
        await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))


async def every_concurrency(client: httpx.AsyncClient, model: str, concurrency: int, max_tokens: int) -> None:
    """k = 1..C requests together at a short and at a long context; fails on any non-200."""
    longest = max([await prompt_tokens(client, model, p) for p in PROMPTS])
    deepest = longest + max(max_tokens, HANG_UP_TOKENS)  # the deepest position the load can reach
    for prompt in (PROMPTS[0], await long_prompt(client, model, deepest)):
        for k in range(1, concurrency + 1):
            body: dict[str, Any] = chat_body(model, prompt, DECODE_STEPS, temperature=0, ignore_eos=True)
            together = (client.post("/v1/chat/completions", json=body) for _ in range(k))
            answers = await asyncio.gather(*together)
            for r in answers:
                if fault_error(r.status_code, _json(r.content)):  # an injected fault (--faults): documented
                    await asyncio.sleep(2)  # the engine restarts; the load's requests check the rest
                elif r.status_code != 200:
                    raise RuntimeError(f"warm-up request failed: {r.status_code} {r.text[:200]}")


async def warm_up(url: str, model: str, concurrency: int, max_tokens: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300.0) as client:
        await fill_pools(client, model, concurrency)
        await every_concurrency(client, model, concurrency, max_tokens)

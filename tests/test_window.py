"""engine.core.window: sliding-window layers keep only their window. A sequence holds the window's
blocks (plus one step's), whatever its length; the pool is sized by the window, not `max_context`;
a newcomer shares a cached prefix only as far as that prefix's window is still there; and a
model with sliding layers gives transformers' greedy tokens past its window, alone, batched and
from a shared prefix."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from engine.core.blocks import BLOCK_SIZE, blocks_for
from engine.core.request import Delta, SamplingParams
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.core.window import WindowBlocks, window_pool_blocks
from engine.model.lean.families import layer_windows
from tests.families import WINDOW, build, engine_over, reference
from tests.greedy import engine_generate

W = 64  # the unit tests' window: 4 blocks


def _seq(rid: str, prompt: list[int]) -> Sequence:
    def emit(d: Delta) -> None:
        pass

    return Sequence(rid, prompt, SamplingParams(max_tokens=4), emit)


def _run(sched: Scheduler, steps: int) -> list[tuple[Sequence, int]]:
    """`steps` engine steps: schedule, count the computed tokens, append a sampled token."""
    plan: list[tuple[Sequence, int]] = []
    for _ in range(steps):
        plan = sched.schedule()
        for seq, n in plan:
            seq.num_computed += n
            sched.computed(seq)
            if seq.remaining == 0:
                seq.token_ids.append(7)
    return plan


def _window_scheduler(caching: bool = True, max_batch: int = 4) -> Scheduler:
    blocks = window_pool_blocks(W, max_batch, 4 * 32 + max_batch, 4096)
    return Scheduler(max_batch, 4096, 8, 32, caching, WindowBlocks(W, blocks, caching))


def test_a_long_sequence_holds_only_its_window() -> None:
    sched = _window_scheduler()
    window = sched.window
    assert window is not None
    a = _seq("a", list(range(1, 301)))  # 300 tokens: ~5 windows
    sched.waiting.append(a)
    held: list[int] = []
    for _ in range(200):  # the prompt in chunks of 32, then 190-odd tokens decoded
        _run(sched, 1)
        live = [b for b in a.window_table if b]
        held.append(len(live))
        first = window.first_needed(a.num_computed)
        assert all(b == 0 for b in a.window_table[:first])  # everything before the window handed back
        assert all(a.window_table[first : blocks_for(a.num_computed)])  # the window itself is there
    assert a.num_computed > 450 and len(a.block_table) == blocks_for(a.num_computed + 1)
    assert max(held) <= blocks_for(W) + 1  # never more than the window's blocks (+ the partial one)
    assert window.pool.used_count == max(held[-1], 1)
    sched.finish(a)
    assert window.pool.used_count == 0 and sched.blocks.used_count == 0


def test_the_pool_is_sized_by_the_window_not_the_context() -> None:
    assert window_pool_blocks(512, 32, 1056, 1 << 20) == 32 * (32 + 3) + 66 + 1  # a 16M-token budget
    assert window_pool_blocks(512, 32, 1056, 1025) == 1025  # never more than the full cache's


def test_a_newcomer_shares_a_prefix_as_far_as_its_window_is_still_there() -> None:
    sched = _window_scheduler()
    prompt = list(range(1, 201))
    a = _seq("a", prompt)
    sched.waiting.append(a)
    _run(sched, 8)  # the prompt (7 chunks), one token decoded
    sched.finish(a)  # its blocks stay cached: the full ones and the last window's
    b = _seq("b", [*prompt, 7, 500, 501])  # a's prompt and its answer, then more: a follow-up turn
    sched.waiting.append(b)
    _run(sched, 1)
    assert b.cached_tokens == 12 * BLOCK_SIZE  # every whole block a computed, window included
    c = _seq("c", [*prompt[:100], 900, 901])  # an early prefix, whose window was handed back...
    sched.waiting.append(c)
    _run(sched, 1)
    assert c.cached_tokens == 6 * BLOCK_SIZE  # ...but still cached (nobody needed its blocks)
    window = sched.window
    assert window is not None
    for s in (b, c):
        first = window.first_needed(s.cached_tokens)
        assert all(s.window_table[first : s.cached_tokens // BLOCK_SIZE])


def test_a_prefix_whose_window_was_reused_is_computed_again() -> None:
    sched = Scheduler(2, 4096, 8, 32, True, WindowBlocks(W, 12, True))  # a tiny window pool
    prompt = list(range(1, 201))
    a = _seq("a", prompt)
    sched.waiting.append(a)
    _run(sched, 8)
    sched.finish(a)
    filler = _seq("f", list(range(5000, 5200)))  # another long prompt takes every window block back
    sched.waiting.append(filler)
    _run(sched, 8)
    sched.finish(filler)
    b = _seq("b", [*prompt, 7])
    sched.waiting.append(b)
    _run(sched, 1)
    assert b.cached_tokens == 0  # the full blocks are cached, their window is not: start over


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)


@pytest.mark.parametrize("name", ["gemma3", "mistral"])
def test_a_model_with_sliding_layers_keeps_their_window_apart_and_is_exact(name: str, tokenizer: Any) -> None:
    """Gemma 3 (two sliding layers, one global) and Mistral (all sliding), window 16: 3-window
    prompts and 40 new tokens equal transformers' greedy tokens alone and batched, and again from
    a prefix the first run left in the cache; each sequence held its window's blocks only."""
    model = build(name)
    prompts = [list(range(300, 300 + n)) for n in (3 * WINDOW + 5, 2 * WINDOW - 3)]
    want = reference(model, prompts, 40)
    with engine_over(model, tokenizer) as engine:
        runner = engine.runner
        assert runner.window == WINDOW and runner.window_cache is not None
        sliding = [i for i, w in enumerate(layer_windows(model)) if w is not None]
        assert runner.window_cache.layers == sliding and runner.cache.layers == [
            i for i in range(model.config.num_hidden_layers) if i not in sliding
        ]
        # 4 sequences of their windows at most (and a step's tokens), not of max_context (256)
        assert runner.window_cache.num_blocks < engine.num_blocks
        together = [t for t, _ in engine_generate(engine, prompts, [40, 40])]
        alone = [t for t, _ in engine_generate(engine, prompts, [40, 40], False)]
        # the same prompts again: their whole blocks come from the prefix cache, windows included
        hits = engine.scheduler.hit_tokens
        again = [t for t, _ in engine_generate(engine, prompts, [40, 40])]
        assert engine.scheduler.hit_tokens - hits >= 4 * BLOCK_SIZE
        window = engine.scheduler.window
        assert window is not None
        deadline = time.monotonic() + 5  # the engine thread frees a sequence just after its last token
        while window.pool.used_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert window.pool.used_count == 0  # all handed back
    assert together == want and alone == want and again == want

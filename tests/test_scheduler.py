"""The scheduler alone: no model, no torch work."""

from __future__ import annotations

from engine.core.blocks import BLOCK_SIZE
from engine.core.request import Delta, SamplingParams, Status
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence


def _seq(rid: str, prompt: list[int]) -> Sequence:
    def emit(d: Delta) -> None:
        pass

    return Sequence(rid, prompt, SamplingParams(max_tokens=4), emit)


def _step(sched: Scheduler, plan: list[tuple[Sequence, int]], sampled: int = 7) -> None:
    """What the engine does after running `plan`: count the computed tokens, register full
    blocks, and append a token to each sequence that reached the end of its tokens."""
    for seq, n in plan:
        seq.num_computed += n
        sched.computed(seq)
        if seq.remaining == 0:
            seq.token_ids.append(sampled)


def test_decoding_sequences_run_before_prefill_and_prefill_is_chunked() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=10)
    a = _seq("a", list(range(1, 60)))
    sched.waiting.append(a)
    plan = sched.schedule()
    assert plan == [(a, 10)] and a.status is Status.RUNNING  # a prompt's chunk: at most the budget
    a.num_computed += 10
    b, x = _seq("b", [5, 6, 7]), _seq("x", list(range(300, 330)))
    sched.waiting.extend([b, x])
    plan = sched.schedule()
    assert plan == [(a, 10), (b, 3), (x, 10)]  # nobody decoding: 4x the budget a step, oldest first
    a.num_computed += 10
    b.num_computed += 2  # b's last prompt token computed -> b decodes
    x.num_computed += 10
    plan = sched.schedule()
    assert plan == [(b, 1), (a, 10)]  # decodes first, then prefill within the budget
    a.num_computed += 10
    b.num_computed += 1
    b.token_ids.append(100)
    c = _seq("c", list(range(200, 229)))
    sched.waiting.append(c)
    a.num_computed = a.num_tokens - 1  # a's last prompt token computed -> a decodes too
    plan = sched.schedule()
    assert plan == [(a, 1), (b, 1), (x, 10)]  # x (older) takes the budget before newcomer c


def test_max_batch_caps_the_running_sequences_and_a_finished_one_leaves_at_once() -> None:
    sched = Scheduler(max_batch=1, num_blocks=64, max_waiting=8, prefill_budget=100)
    a, b = _seq("a", [1, 2, 3]), _seq("b", [4, 5])
    sched.waiting.extend([a, b])
    assert [s for s, _ in sched.schedule()] == [a]
    a.num_computed = 3
    sched.finish(a)
    assert a.status is Status.FINISHED and not sched.running
    assert [s for s, _ in sched.schedule()] == [b]


def test_a_sequence_holds_the_blocks_its_tokens_fill_and_gets_more_as_it_decodes() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=100)
    a = _seq("a", list(range(1, 2 * BLOCK_SIZE + 1)))  # two full blocks
    sched.waiting.append(a)
    _step(sched, sched.schedule())
    assert len(a.block_table) == 2 and sched.blocks.used_count == 2
    sched.schedule()  # its next token goes to position 32: a third block
    assert len(a.block_table) == 3 and 0 not in a.block_table
    sched.finish(a)
    assert sched.blocks.used_count == 0 and a.block_table == []


def test_a_finished_prompt_s_full_blocks_are_reused_and_the_last_token_is_always_computed() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=1000)
    prompt = list(range(1, 3 * BLOCK_SIZE + 1))  # exactly 3 blocks
    a = _seq("a", prompt)
    sched.waiting.append(a)
    _step(sched, sched.schedule())
    sched.finish(a)
    b = _seq("b", prompt[: 2 * BLOCK_SIZE + 5] + [999])
    c = _seq("c", prompt)  # the same prompt: its last block is computed again (for its logits)
    sched.waiting.extend([b, c])
    plan = sched.schedule()
    assert plan == [(b, 6), (c, BLOCK_SIZE)]
    assert b.cached_tokens == 2 * BLOCK_SIZE and c.cached_tokens == 2 * BLOCK_SIZE
    assert b.block_table[:2] == c.block_table[:2]  # shared, read-only
    assert sched.hit_tokens == 4 * BLOCK_SIZE


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    sched = Scheduler(max_batch=4, num_blocks=7, max_waiting=8, prefill_budget=1000)  # 6 usable
    old, new = list(range(1, 2 * BLOCK_SIZE + 1)), list(range(500, 500 + 2 * BLOCK_SIZE))
    for rid, prompt in (("old", old), ("new", new)):
        seq = _seq(rid, prompt)
        sched.waiting.append(seq)
        _step(sched, sched.schedule())
        sched.finish(seq)
    big = _seq("big", list(range(900, 900 + 4 * BLOCK_SIZE)))  # needs 4: takes 2 never used, then old's
    sched.waiting.append(big)
    _step(sched, sched.schedule())
    sched.finish(big)
    again_new, again_old = _seq("n", [*new, 1]), _seq("o", [*old, 1])
    sched.waiting.extend([again_new, again_old])
    sched.schedule()
    assert again_new.cached_tokens == 2 * BLOCK_SIZE and again_old.cached_tokens == 0


def test_prefix_cache_off_reuses_nothing() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=1000, caching=False)
    prompt = list(range(1, 3 * BLOCK_SIZE + 1))
    a = _seq("a", prompt)
    sched.waiting.append(a)
    _step(sched, sched.schedule())
    sched.finish(a)
    b = _seq("b", prompt)
    sched.waiting.append(b)
    assert sched.schedule() == [(b, len(prompt))] and b.cached_tokens == 0


def test_a_burst_sharing_a_system_prompt_computes_it_once() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=256)
    system = list(range(1000, 1040))  # 40 tokens every request starts with: 2 full blocks and 8
    a, b, c = (_seq(r, system + [i, i + 1, i + 2]) for r, i in (("a", 1), ("b", 5), ("c", 9)))
    d = _seq("d", [7, 8, 9])  # shares nothing: not held up by the others
    sched.waiting.extend([a, b, c, d])
    plan = sched.schedule()
    assert plan == [(a, 43), (d, 3)]  # b and c wait for a's system prompt
    _step(sched, plan)
    plan = sched.schedule()
    assert [(s.request_id, n) for s, n in plan if s in (b, c)] == [("b", 3), ("c", 3)]
    partial = a.block_table[2]  # the system prompt's last 8 tokens: copied, not shared
    assert sched.take_copies() == [(partial, b.block_table[2]), (partial, c.block_table[2])]
    assert b.block_table[:2] == c.block_table[:2] == a.block_table[:2]
    assert b.cached_tokens == c.cached_tokens == 40


def test_short_shared_prefixes_are_not_waited_for() -> None:
    sched = Scheduler(max_batch=4, num_blocks=64, max_waiting=8, prefill_budget=256)
    a, b = _seq("a", [1, 2, 3, 4, 5]), _seq("b", [1, 2, 3, 9, 9])
    sched.waiting.extend([a, b])
    assert sched.schedule() == [(a, 5), (b, 5)]
    assert sched.take_copies() == []


def test_a_prompt_waits_for_free_blocks_in_order() -> None:
    sched = Scheduler(max_batch=4, num_blocks=9, max_waiting=8, prefill_budget=1000)  # 8 usable
    a = _seq("a", list(range(1, 5 * BLOCK_SIZE + 1)))  # 5 blocks
    b = _seq("b", list(range(200, 200 + 3 * BLOCK_SIZE)))  # 3 more would leave no reserve for a
    c = _seq("c", [5, 6])  # would fit, but does not overtake b
    sched.waiting.extend([a, b, c])
    assert sched.schedule() == [(a, 5 * BLOCK_SIZE)] and list(sched.waiting) == [b, c]
    sched.finish(a)
    assert [s for s, _ in sched.schedule()] == [b, c]


def test_a_full_cache_preempts_the_newest_sequence_which_resumes_with_its_tokens() -> None:
    sched = Scheduler(max_batch=4, num_blocks=5, max_waiting=8, prefill_budget=1000)  # 4 usable
    a = _seq("a", list(range(1, 2 * BLOCK_SIZE + 1)))  # 32 tokens: 2 blocks
    sched.waiting.append(a)
    plan = sched.schedule()
    a.num_computed += 2 * BLOCK_SIZE - 1  # as if its last prompt token were still to come
    b = _seq("b", list(range(100, 100 + BLOCK_SIZE)))  # 16 tokens: 1 block, and 1 in reserve for a
    sched.waiting.append(b)
    plan = sched.schedule()
    assert [s for s, _ in plan] == [a, b]
    _step(sched, plan)  # a: 32 tokens computed, its next one needs a 3rd block; b: 17, needs a 2nd
    plan = sched.schedule()
    assert plan == [(a, 1)] and b.status is Status.WAITING and sched.preemptions == 1
    assert list(sched.waiting) == [b] and b.num_computed == 0 and b.block_table == []
    assert b.token_ids[-1] == 7 and b.num_tokens == BLOCK_SIZE + 1  # its generated token is kept
    sched.finish(a)
    plan = sched.schedule()
    assert plan == [(b, 1)]  # readmitted: its full first block came back from the cache
    assert b.num_computed == BLOCK_SIZE and b.cached_tokens == 0  # cached_tokens: its first admission

"""The scheduler and slot pool alone: no model, no torch work."""

from __future__ import annotations

from engine.core.request import Delta, SamplingParams, Status
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence
from engine.core.slots import SlotPool


def _seq(rid: str, prompt: list[int]) -> Sequence:
    def emit(d: Delta) -> None:
        pass

    return Sequence(rid, prompt, SamplingParams(max_tokens=4), emit)


def test_decoding_sequences_run_before_prefill_and_prefill_is_chunked() -> None:
    sched = Scheduler(num_slots=4, max_waiting=8, prefill_budget=10)
    a = _seq("a", list(range(1, 60)))
    sched.waiting.append(a)
    plan = sched.schedule()
    assert plan == [(a, 40)] and a.status is Status.RUNNING  # nobody decoding: a bigger bite
    a.num_computed += 40
    b = _seq("b", [5, 6, 7])
    sched.waiting.append(b)
    plan = sched.schedule()
    assert plan == [(a, 19), (b, 3)]  # the older prompt first
    a.num_computed += 19
    b.num_computed += 2  # b's last prompt token computed -> b decodes; a decodes too
    a.token_ids.append(100)
    c = _seq("c", list(range(200, 229)))
    sched.waiting.append(c)
    plan = sched.schedule()
    assert plan == [(a, 1), (b, 1), (c, 10)]  # decodes first, then prefill within the budget


def test_finished_sequence_frees_its_slot_at_once() -> None:
    sched = Scheduler(num_slots=1, max_waiting=8, prefill_budget=100)
    a, b = _seq("a", [1, 2, 3]), _seq("b", [4, 5])
    sched.waiting.extend([a, b])
    assert [s for s, _ in sched.schedule()] == [a]
    a.num_computed = 3
    sched.finish(a)
    assert a.status is Status.FINISHED and not sched.running
    assert [s for s, _ in sched.schedule()] == [b]


def test_slot_pool_prefers_the_longest_cached_prefix_and_keeps_one_token_to_compute() -> None:
    pool = SlotPool(3)
    s1, _ = pool.acquire([1, 2, 3, 4])
    s2, _ = pool.acquire([9, 9])
    pool.release(s1, [1, 2, 3, 4])
    pool.release(s2, [9, 9])
    slot, cached = pool.acquire([1, 2, 3, 7])
    assert slot == s1 and cached == 3
    slot, cached = pool.acquire([9, 9])
    assert slot == s2 and cached == 1  # the last prompt token is always recomputed


def test_a_burst_sharing_a_system_prompt_computes_it_once() -> None:
    sched = Scheduler(num_slots=4, max_waiting=8, prefill_budget=256)
    system = list(range(1000, 1040))  # 40 tokens every request starts with
    a, b, c = (_seq(r, system + [i, i + 1, i + 2]) for r, i in (("a", 1), ("b", 5), ("c", 9)))
    d = _seq("d", [7, 8, 9])  # shares nothing: not held up by the others
    sched.waiting.extend([a, b, c, d])
    plan = sched.schedule()
    assert plan == [(a, 43), (d, 3)]  # b and c wait for a's copy of the system prompt
    a.num_computed += 43
    d.num_computed += 3
    plan = sched.schedule()
    assert [(s.request_id, n) for s, n in plan] == [("b", 3), ("c", 3)]
    assert sched.take_copies() == [(a.slot, b.slot, 40), (a.slot, c.slot, 40)]
    assert b.cached_tokens == c.cached_tokens == 40


def test_short_shared_prefixes_are_not_waited_for() -> None:
    sched = Scheduler(num_slots=4, max_waiting=8, prefill_budget=256)
    a, b = _seq("a", [1, 2, 3, 4, 5]), _seq("b", [1, 2, 3, 9, 9])
    sched.waiting.extend([a, b])
    assert sched.schedule() == [(a, 5), (b, 5)]
    assert sched.take_copies() == []


def test_a_newcomer_copies_what_a_running_sequence_has_computed() -> None:
    sched = Scheduler(num_slots=4, max_waiting=8, prefill_budget=256)
    a = _seq("a", list(range(1, 101)))
    sched.waiting.append(a)
    sched.schedule()
    a.num_computed = 100
    a.token_ids.append(7)  # decoding
    b = _seq("b", list(range(1, 51)) + [500, 501])
    sched.waiting.append(b)
    assert sched.schedule() == [(a, 1), (b, 2)]
    assert sched.take_copies() == [(a.slot, b.slot, 50)]

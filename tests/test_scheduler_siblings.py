"""The n choices of one request in the scheduler: siblings wait for the parent's prefill, then share it."""

from __future__ import annotations

from engine.core.blocks import BLOCK_SIZE
from engine.core.request import Delta, SamplingParams, Status
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence


def _emit(d: Delta) -> None:
    pass


def _family(prompt: list[int], n: int) -> list[Sequence]:
    seqs: list[Sequence] = []
    for i in range(n):
        parent = seqs[0] if seqs else None
        seqs.append(Sequence(f"r/{i}", prompt, SamplingParams(max_tokens=4), _emit, index=i, parent=parent))
    return seqs


def test_siblings_wait_for_the_parent_prefill_without_blocking_others_then_share_its_kv() -> None:
    sched = Scheduler(max_batch=4, num_blocks=16, max_waiting=8, prefill_budget=4)
    parent, sib = _family(list(range(1, 11)), 2)
    other = Sequence("o", [7, 8], SamplingParams(max_tokens=4), _emit)
    sched.waiting.extend([parent, sib, other])

    plan = sched.schedule()
    assert plan == [(parent, 4), (other, 2)]  # the sibling waits, the request behind it goes ahead
    assert list(sched.waiting) == [sib]
    parent.num_computed += 4
    other.num_computed += 2
    other.token_ids.append(98)
    plan = sched.schedule()
    assert plan == [(other, 1), (parent, 4)] and list(sched.waiting) == [sib]
    parent.num_computed += 4
    other.num_computed += 1
    other.token_ids.append(97)
    plan = sched.schedule()
    assert plan == [(other, 1), (parent, 2)]
    assert list(sched.waiting) == [sib] and sched.take_copies() == []
    parent.num_computed += 2
    other.num_computed += 1
    parent.token_ids.append(99)
    other.token_ids.append(96)

    plan = sched.schedule()
    assert (sib, 1) in plan and sib.status is Status.RUNNING
    assert sib.num_computed == sib.cached_tokens == 9  # all but the last prompt token
    # the prompt's 10 tokens fill part of one block: the sibling gets a copy of it (copy-on-write)
    assert sched.take_copies() == [(parent.block_table[0], sib.block_table[0])]
    assert sched.take_copies() == []


def test_sibling_of_a_finished_parent_reuses_its_cached_blocks() -> None:
    sched = Scheduler(max_batch=1, num_blocks=16, max_waiting=8, prefill_budget=100)
    parent, sib = _family(list(range(1, 2 * BLOCK_SIZE + 4)), 2)  # 2 full blocks and 3 tokens
    sched.waiting.extend([parent, sib])
    assert sched.schedule() == [(parent, 2 * BLOCK_SIZE + 3)]
    parent.num_computed = 2 * BLOCK_SIZE + 3
    sched.computed(parent)
    sched.finish(parent)
    assert sched.schedule() == [(sib, 3)]  # the rest of the prompt after the cached full blocks
    assert sib.num_computed == 2 * BLOCK_SIZE and sched.take_copies() == []

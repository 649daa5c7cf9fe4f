"""Iteration-level scheduling: which tokens of which sequences run in the next step.

Policy, every step:
1. every running sequence that is decoding contributes its one new token, so streams
   never stall behind a newcomer;
2. sequences still prefilling get chunks of their prompt, oldest first, within
   `prefill_budget` tokens per step (4x that when no sequence is decoding);
3. waiting requests are admitted into free slots (reusing a cached prefix where one
   exists) while prefill budget and slots last.
A finished or aborted sequence leaves the batch at once and its slot is free for the next step.

Siblings (the choices 1..n-1 of a request for n, see `Sequence.parent`) share the prompt's
prefill: one waits, without holding up the requests behind it, until its parent has computed
the prompt, then is admitted with the parent's KV for all but the last prompt token copied into
its own slot (`copies`, which the engine applies before the step runs). It computes only that
last token, whose logits give its own first token. A sibling whose parent already finished
takes the parent's freed slot by the ordinary prefix reuse, when still free.
No torch here: plain Python over a deque and a list.
"""

from __future__ import annotations

from collections import deque

from engine.request import Status
from engine.sequence import Sequence
from engine.slots import SlotPool

IDLE_PREFILL_FACTOR = 4


class Scheduler:
    def __init__(self, num_slots: int, max_waiting: int, prefill_budget: int) -> None:
        self.slots = SlotPool(num_slots)
        self.max_waiting = max_waiting
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.copies: list[tuple[int, int, int]] = []  # (source slot, target slot, tokens) before the step

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> bool:
        """Queue a request; False when the wait queue is full."""
        if len(self.waiting) >= self.max_waiting + max(self.slots.free_count, 0):
            return False
        self.waiting.append(seq)
        return True

    def schedule(self) -> list[tuple[Sequence, int]]:
        """The next step's work: (sequence, number of its tokens to run)."""
        plan = [(s, 1) for s in self.running if s.remaining == 1]
        # With nobody decoding there is no stream to stall: take a bigger bite of the queue.
        budget = self.prefill_budget if plan else self.prefill_budget * IDLE_PREFILL_FACTOR
        prefilling = [s for s in self.running if s.remaining > 1]
        for seq in prefilling:
            if budget <= 0:
                break
            n = min(seq.remaining, budget)
            plan.append((seq, n))
            budget -= n
        held: list[Sequence] = []
        while self.waiting and budget > 0 and self.slots.free_count:
            seq = self.waiting.popleft()
            if not _parent_ready(seq):
                held.append(seq)
                continue
            self._admit(seq)
            n = min(seq.remaining, budget)
            plan.append((seq, n if seq.remaining > 1 else 1))
            budget -= n
        self.waiting.extendleft(reversed(held))
        return plan

    def take_copies(self) -> list[tuple[int, int, int]]:
        """The KV prefix copies the last `schedule()` asked for; the caller must apply them first."""
        copies, self.copies = self.copies, []
        return copies

    def _admit(self, seq: Sequence) -> None:
        slot, cached = self.slots.acquire(seq.token_ids)
        parent = seq.parent
        shared = seq.num_prompt - 1
        if parent is not None and parent.status is Status.RUNNING and cached < shared:
            assert parent.slot is not None and parent.num_computed >= shared
            self.copies.append((parent.slot, slot, shared))
            cached = shared
        seq.slot, seq.num_computed, seq.cached_tokens = slot, cached, cached
        seq.status = Status.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished, aborted or failed) and free its slot."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            assert seq.slot is not None
            self.slots.release(seq.slot, seq.token_ids[: seq.num_computed])
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.slot = None

    def find(self, request_id: str) -> Sequence | None:
        for seq in self.running:
            if seq.request_id == request_id:
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                return seq
        return None


def _parent_ready(seq: Sequence) -> bool:
    """A sibling may start once its parent has computed the prompt (or is gone)."""
    parent = seq.parent
    if parent is None or parent.status is Status.FINISHED:
        return True
    return parent.status is Status.RUNNING and parent.num_computed >= seq.num_prompt - 1

"""Iteration-level scheduling: which tokens of which sequences run in the next step.

Policy, every step:
1. every running sequence that is decoding contributes its one new token, so streams
   never stall behind a newcomer;
2. sequences still prefilling get chunks of their prompt, oldest first, within
   `prefill_budget` tokens per step (at least one chunk per step, so prompts always move);
3. waiting requests are admitted into free slots (reusing a cached prefix where one
   exists) while prefill budget and slots last.
A finished or aborted sequence leaves the batch at once and its slot is free for the next step.
No torch here: plain Python over a deque and a list.
"""

from __future__ import annotations

from collections import deque

from engine.request import Status
from engine.sequence import Sequence
from engine.slots import SlotPool


class Scheduler:
    def __init__(self, num_slots: int, max_waiting: int, prefill_budget: int) -> None:
        self.slots = SlotPool(num_slots)
        self.max_waiting = max_waiting
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

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
        budget = self.prefill_budget
        prefilling = [s for s in self.running if s.remaining > 1]
        for seq in prefilling:
            if budget <= 0:
                break
            n = min(seq.remaining, budget)
            plan.append((seq, n))
            budget -= n
        while self.waiting and budget > 0 and self.slots.free_count:
            seq = self.waiting.popleft()
            self._admit(seq)
            n = min(seq.remaining, budget)
            plan.append((seq, n if seq.remaining > 1 else 1))
            budget -= n
        return plan

    def _admit(self, seq: Sequence) -> None:
        slot, cached = self.slots.acquire(seq.token_ids)
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

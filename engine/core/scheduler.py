"""Iteration-level scheduling: which tokens of which sequences run in the next step.

Policy, every step:
1. every running sequence that is decoding contributes its one new token, so streams
   never stall behind a newcomer;
2. sequences still prefilling get chunks of their prompt, oldest first, within
   `prefill_budget` tokens per step (4x that when no sequence is decoding);
3. waiting requests are admitted into free slots (reusing a cached prefix where one
   exists) while prefill budget and slots last.
A finished or aborted sequence leaves the batch at once and its slot is free for the next step.

Running sequences lend their computed prompt prefix to newcomers: a request whose prompt
starts like a running one's (a shared system prompt, the n choices of one request) is admitted
with that prefix's KV copied into its own slot (`copies`, which the engine applies before the
step runs), and computes only the rest. When the shared part (at least `MIN_SHARED_PREFIX`
tokens) is still being computed by the other sequence, the newcomer waits for it, without
holding up the requests behind it: a burst of requests with one system prompt computes it once.
Siblings (the choices 1..n-1 of a request for n, see `Sequence.parent`) are the extreme case:
they share all but the last prompt token, whose logits give each its own first token.
No torch here: plain Python over a deque and a list.
"""

from __future__ import annotations

from collections import deque

from engine.core.request import Status
from engine.core.sequence import Sequence
from engine.core.slots import SlotPool, common_prefix

IDLE_PREFILL_FACTOR = 4
# A newcomer waits for a running sequence to compute a shared prompt prefix only when it is at
# least this long; shorter ones cost less to compute again than a step's wait.
MIN_SHARED_PREFIX = 16


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
            if not _parent_ready(seq) or self._worth_waiting(seq):
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
        donor, shared = self._donor(seq)
        ready = min(shared, donor.num_computed) if donor is not None else 0
        if donor is not None and ready > cached:
            assert donor.slot is not None
            self.copies.append((donor.slot, slot, ready))
            cached = ready
        seq.slot, seq.num_computed, seq.cached_tokens = slot, cached, cached
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _donor(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence whose prompt shares the longest prefix with `seq`'s, and that length
        (at most all but `seq`'s last prompt token)."""
        prompt = seq.token_ids[: seq.num_prompt - 1]
        best: Sequence | None = None
        best_len = 0
        for other in self.running:
            if other is seq or not prompt or other.token_ids[0] != prompt[0]:
                continue
            n = common_prefix(other.token_ids[: other.num_prompt], prompt)
            if n > best_len:
                best, best_len = other, n
        return best, best_len

    def _worth_waiting(self, seq: Sequence) -> bool:
        """Whether a running sequence is about to compute a long prefix of `seq`'s prompt that no
        free slot holds: then `seq` waits a step or more and copies it instead of computing it."""
        donor, shared = self._donor(seq)
        if donor is None or shared < MIN_SHARED_PREFIX or donor.num_computed >= shared:
            return False
        return self.slots.best_cached(seq.token_ids) < shared

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

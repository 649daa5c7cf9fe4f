"""Iteration-level scheduling: which tokens of which sequences run in the next step.

Policy, every step:
1. every running sequence that is decoding contributes its one new token, so streams
   never stall behind a newcomer; one that needs a new KV block gets it, and when none is
   free the most recently admitted sequence is preempted (its blocks freed, itself back at the
   head of the queue with its generated tokens, to be recomputed; mostly from the prefix cache);
2. sequences still prefilling get chunks of their prompt, oldest first, within
   `prefill_budget` tokens per step (4x that when no sequence is decoding), at most
   `prefill_budget` each (a longer chunk costs more attention: every row of it reads the chunk's
   whole key length, masked or not; 1,024-token chunks made a lone 1,700-token prompt ~10 % slower);
3. waiting requests are admitted, first come first served, while prefill budget, rows
   (`max_batch`) and free KV blocks for their prompt last; the blocks of the prompt's prefix that
   the prefix cache holds (engine.core.blocks) are shared rather than computed.
A finished or aborted sequence leaves the batch at once; its blocks stay cached until reused.

Running sequences lend their computed prompt prefix to newcomers: a request whose prompt
starts like a running one's (a shared system prompt, the n choices of one request) shares that
prefix's full blocks and gets a copy of the partial last one (`copies`, (source block, target
block) pairs the engine applies before the step runs), and computes only the rest. When the
shared part (at least `MIN_SHARED_PREFIX` tokens) is still being computed by the other sequence,
the newcomer waits for it, without holding up the requests behind it: a burst of requests with
one system prompt computes it once. Siblings (the choices 1..n-1 of a request for n, see
`Sequence.parent`) are the extreme case: they share all but the last prompt token, whose logits
give each its own first token. No torch here: plain Python over a deque and a list.
"""

from __future__ import annotations

import logging
from collections import deque

from engine.core.blocks import BLOCK_SIZE, BlockPool, blocks_for
from engine.core.request import Status
from engine.core.sequence import Sequence
from engine.core.window import WindowBlocks

log = logging.getLogger("hearth.engine")

IDLE_PREFILL_FACTOR = 4
# A newcomer waits for a running sequence to compute a shared prompt prefix only when it is at
# least this long; shorter ones cost less to compute again than a step's wait.
MIN_SHARED_PREFIX = 16


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """`max_batch` running sequences at most, over a pool of `num_blocks` KV blocks."""

    def __init__(
        self,
        max_batch: int,
        num_blocks: int,
        max_waiting: int,
        prefill_budget: int,
        caching: bool = True,
        window: WindowBlocks | None = None,
    ) -> None:
        self.blocks = BlockPool(num_blocks, caching)
        self.window = window  # the sliding-window layers' own blocks, when the model has them
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_budget = prefill_budget
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.copies: list[tuple[int, int]] = []  # (source block, target block) before the step
        self._rows = list(range(max_batch, 0, -1))  # free rows, lowest last (popped first)
        self.preemptions = 0
        self.hit_tokens = 0  # prompt tokens admitted from the cache (shared), and computed
        self.miss_tokens = 0

    def figures(self) -> dict[str, int]:
        """The `EngineStats` fields the scheduler knows: gauges and its counters."""
        blocks = self.blocks
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "kv_blocks_used": blocks.used_count,
            "kv_blocks_total": blocks.capacity,
            "prefix_hit_tokens": self.hit_tokens,
            "prefix_miss_tokens": self.miss_tokens,
            "preemptions": self.preemptions,
        }

    def carry_counters(self, old: Scheduler) -> None:
        """Continue `old`'s counters (an engine restart: counters never go down)."""
        self.hit_tokens, self.miss_tokens = old.hit_tokens, old.miss_tokens
        self.preemptions = old.preemptions

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> bool:
        """Queue a request; False when the wait queue is full."""
        if len(self.waiting) >= self.max_waiting + len(self._rows):
            return False
        self.waiting.append(seq)
        return True

    def schedule(self) -> list[tuple[Sequence, int]]:
        """The next step's work: (sequence, number of its tokens to run)."""
        self._grow()
        plan = [(s, 1) for s in self.running if s.remaining == 1]
        # With nobody decoding there is no stream to stall: take a bigger bite of the queue.
        budget = self.prefill_budget if plan else self.prefill_budget * IDLE_PREFILL_FACTOR
        prefilling = [s for s in self.running if s.remaining > 1]
        for seq in prefilling:
            if budget <= 0:
                break
            n = min(seq.remaining, budget, self.prefill_budget)
            if seq.status is not Status.RUNNING or not self._fit_window(seq, n):
                continue  # preempted to make room, or no room in the window pool this step
            plan.append((seq, n))
            budget -= n
        held: list[Sequence] = []
        while self.waiting and budget > 0 and self._rows:
            seq = self.waiting.popleft()
            if not _parent_ready(seq) or self._worth_waiting(seq):
                held.append(seq)
                continue
            if not self._admit(seq):
                held.append(seq)
                break  # first come, first served: nobody overtakes a request waiting for blocks
            n = min(seq.remaining, budget, self.prefill_budget)
            n = n if seq.remaining > 1 else 1
            if self.window is not None:
                grown = self.window.grow(seq, n)
                assert grown, "window blocks reserved by _admit"
            plan.append((seq, n))
            budget -= n
        self.waiting.extendleft(reversed(held))
        return [(s, n) for s, n in plan if s.status is Status.RUNNING]

    def take_copies(self) -> list[tuple[int, int]]:
        """The KV block copies the last `schedule()` asked for; the caller must apply them first."""
        copies, self.copies = self.copies, []
        return copies

    def computed(self, seq: Sequence) -> None:
        """After a step: put `seq`'s newly full, computed blocks in the prefix cache."""
        seq.num_registered = self.blocks.register(
            seq.block_table, seq.block_keys, seq.token_ids, seq.num_registered, seq.num_computed
        )
        if self.window is not None:
            self.window.register(seq)
            self.window.trim(seq)

    def _grow(self) -> None:
        """Give each decoding sequence the block its next token goes to, preempting the newest
        sequences while no block is free."""
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or seq.remaining != 1:
                continue
            while len(seq.block_table) * BLOCK_SIZE <= seq.num_computed:
                block = self.blocks.new()
                if block is None:
                    victim = self.running[-1]
                    self._preempt(victim)
                    if victim is seq:
                        break
                    continue
                seq.block_table.append(block)
            if seq.status is Status.RUNNING and not self._fit_window(seq, 1):
                self._preempt(seq)

    def _fit_window(self, seq: Sequence, n: int) -> bool:
        """Window blocks for `seq`'s next `n` tokens, preempting the newest other sequences while
        the window pool has too few free; False when only `seq` itself could make room."""
        if self.window is None:
            return True
        while not self.window.grow(seq, n):
            victim = self.running[-1]
            if victim is seq:
                return False
            self._preempt(victim)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)
        log.warning(
            "KV cache full: preempted %s (%d tokens, to be recomputed); %d sequences running",
            seq.request_id,
            seq.num_tokens,
            len(self.running),
        )

    def _free(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.block_table, seq.num_registered = [], 0
        if self.window is not None:
            self.window.release(seq)
        if seq.row is not None:
            self._rows.append(seq.row)
            seq.row = None

    def _admit(self, seq: Sequence) -> bool:
        """Give `seq` a row and the blocks of its prompt, sharing what the cache or a running
        sequence holds; False (nothing taken) when too few blocks are free."""
        tokens = seq.token_ids
        limit = len(tokens) - 1  # the last prompt token is always computed: its logits sample
        shared = self.blocks.match(tokens, limit)
        cached = len(shared) * BLOCK_SIZE
        donor, common = self._donor(seq)
        ready = min(common, donor.num_computed) if donor is not None else 0
        copy_from: int | None = None
        if donor is not None and ready > cached:
            shared = donor.block_table[: ready // BLOCK_SIZE]
            if ready % BLOCK_SIZE:
                copy_from = donor.block_table[ready // BLOCK_SIZE]
            cached = ready
        window_shared: list[int] = []
        if self.window is not None:  # whole blocks only, and only as far as the window's are there
            lent = ready // BLOCK_SIZE if donor is not None else 0
            cached, window_shared = self.window.shareable(seq, cached, donor, lent)
            shared, copy_from = shared[: cached // BLOCK_SIZE], None
            first = min(len(tokens) - cached, self.prefill_budget)
            window_fresh = blocks_for(cached + first) - cached // BLOCK_SIZE
            window_pool = self.window.pool
            if window_pool.cost(window_shared) + window_fresh + len(self.running) > window_pool.free_count:
                return False
        fresh = blocks_for(len(tokens)) - len(shared)
        reserve = len(self.running)  # a block each for the tokens running sequences decode next
        if self.blocks.cost(shared) + fresh + reserve > self.blocks.free_count:
            return False
        self.blocks.take(shared)
        if self.window is not None:
            self.window.adopt(seq, cached, window_shared)
        table = list(shared)
        for _ in range(fresh):
            block = self.blocks.new()
            assert block is not None
            table.append(block)
        if copy_from is not None:
            self.copies.append((copy_from, table[len(shared)]))
        seq.block_table = table
        seq.num_registered = len(shared)  # registered already (or caching is off)
        seq.row, seq.fresh_row = self._rows.pop(), True
        seq.num_computed = cached
        if seq.preemptions == 0:
            seq.cached_tokens = cached
            self.hit_tokens += cached
            self.miss_tokens += seq.num_prompt - cached
        seq.status = Status.RUNNING
        self.running.append(seq)
        return True

    def _donor(self, seq: Sequence) -> tuple[Sequence | None, int]:
        """The running sequence whose tokens share the longest prefix with `seq`'s, and that length
        (at most all but `seq`'s last token); only its parent when the prefix cache is off."""
        prompt = seq.token_ids[:-1]
        best: Sequence | None = None
        best_len = 0
        # without the prefix cache, requests share nothing: only the n choices of one request do
        lenders = self.running if self.blocks.caching else [s for s in self.running if s is seq.parent]
        for other in lenders:
            if other is seq or not prompt or other.token_ids[0] != prompt[0]:
                continue
            n = common_prefix(other.token_ids[: other.num_prompt], prompt)
            if n > best_len:
                best, best_len = other, n
        return best, best_len

    def _worth_waiting(self, seq: Sequence) -> bool:
        """Whether a running sequence is about to compute a long prefix of `seq`'s prompt that the
        cache does not hold: then `seq` waits a step or more and shares it instead of computing it."""
        donor, shared = self._donor(seq)
        if donor is None or shared < MIN_SHARED_PREFIX or donor.num_computed >= shared:
            return False
        return len(self.blocks.match(seq.token_ids, shared)) * BLOCK_SIZE < shared - BLOCK_SIZE

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished, aborted or failed) and free its blocks and row."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self._free(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

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

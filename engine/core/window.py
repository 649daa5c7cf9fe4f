"""The KV blocks of sliding-window layers: each sequence keeps only its window.

A model whose attention layers see only the last `window` positions (Gemma 2/3's sliding layers,
Mistral) keeps those layers' keys and values in a cache of their own (engine.core.kv_cache), in
blocks handed out here. A sequence's `window_table` is indexed like its `block_table` (logical
block i holds positions [16 i, 16 i + 16)), but only the blocks a query may still read hold a block
of this pool; those before `first_needed(position)` are handed back and read as the scratch block
0 (masked out by the window). So a sequence holds at most its window plus one step's tokens,
whatever its length, and the pool is sized by `window_pool_blocks`, not by `max_context`.

A handed-back block keeps its keys under its prefix-cache key (as full blocks do,
engine.core.blocks) until it is handed out again: a newcomer sharing a prompt prefix of L tokens
(from the prefix cache or a running sequence) needs the blocks of the window before position L,
and shares the longest prefix for which they are all still there (`shareable`). No torch here.
"""

from __future__ import annotations

from engine.core.blocks import BLOCK_SIZE, BlockPool, blocks_for, prefix_keys
from engine.core.sequence import Sequence


def window_pool_blocks(window: int, max_batch: int, step_tokens: int, full_blocks: int) -> int:
    """Blocks enough for `max_batch` sequences holding their windows and a step of `step_tokens`
    tokens, at most as many as the full cache's (`full_blocks`, the scratch block included)."""
    return min(full_blocks, max_batch * (blocks_for(window) + 3) + blocks_for(step_tokens) + 1)


class WindowBlocks:
    """The pool of a model's sliding-window layers, `window` positions each query reads."""

    def __init__(self, window: int, num_blocks: int, caching: bool) -> None:
        self.window = window
        self.pool = BlockPool(num_blocks, caching)

    def first_needed(self, position: int) -> int:
        """The first logical block a query at `position` (or after it) reads."""
        return max(0, position - self.window + 1) // BLOCK_SIZE

    def need(self, seq: Sequence, n: int) -> int:
        """Fresh blocks `seq` takes to run its next `n` tokens."""
        return max(0, blocks_for(seq.num_computed + n) - len(seq.window_table))

    def trim(self, seq: Sequence) -> None:
        """Hand back the blocks before the window of `seq`'s next position."""
        table, lo = seq.window_table, self.first_needed(seq.num_computed)
        held = [b for b in table[:lo] if b]
        if held:
            self.pool.release(held)
            table[:lo] = [0] * lo

    def grow(self, seq: Sequence, n: int) -> bool:
        """Blocks for the logical blocks `seq`'s next `n` tokens reach (its old ones trimmed);
        False, with none taken, when the pool has too few free."""
        self.trim(seq)
        if self.need(seq, n) > self.pool.free_count:
            return False
        for _ in range(self.need(seq, n)):
            block = self.pool.new()
            assert block is not None
            seq.window_table.append(block)
        return True

    def register(self, seq: Sequence) -> None:
        """After a step: `seq`'s full, computed blocks get their prefix-cache keys."""
        if not self.pool.caching:
            return
        full = min(seq.num_computed // BLOCK_SIZE, len(seq.window_table))
        keys = prefix_keys(seq.block_keys, seq.token_ids, full)
        for i in range(seq.window_registered, full):
            block = seq.window_table[i]
            if block:
                self.pool.label(block, keys[i], tuple(seq.token_ids[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]))
        seq.window_registered = full

    def shareable(
        self, seq: Sequence, length: int, donor: Sequence | None, lent: int
    ) -> tuple[int, list[int]]:
        """The longest prefix of `seq`'s tokens, whole blocks and at most `length` tokens, whose
        window's blocks are all there: held by `donor` (its first `lent` blocks are `seq`'s own
        tokens, computed), else in the prefix cache. Returns (its length, those blocks), none taken."""
        keys = prefix_keys(seq.block_keys, seq.token_ids, length // BLOCK_SIZE)
        for end in range(length // BLOCK_SIZE, 0, -1):
            found: list[int] = []
            for i in range(self.first_needed(end * BLOCK_SIZE), end):
                block = self._held_by(donor, i, lent) or self._cached(seq, keys, i)
                if not block:
                    break
                found.append(block)
            else:
                return end * BLOCK_SIZE, found
        return 0, []

    def adopt(self, seq: Sequence, length: int, blocks: list[int]) -> None:
        """Hold `blocks` (from `shareable`) as the window of `seq`'s first `length` tokens."""
        self.pool.take(blocks)
        end = length // BLOCK_SIZE
        seq.window_table = [0] * (end - len(blocks)) + blocks
        seq.window_registered = end

    def release(self, seq: Sequence) -> None:
        """Hand back every block `seq` holds (finished or preempted)."""
        self.pool.release([b for b in seq.window_table if b])
        seq.window_table, seq.window_registered = [], 0

    @staticmethod
    def _held_by(donor: Sequence | None, i: int, lent: int) -> int:
        if donor is None or i >= min(lent, len(donor.window_table)):
            return 0
        return donor.window_table[i]

    def _cached(self, seq: Sequence, keys: list[int], i: int) -> int:
        chunk = tuple(seq.token_ids[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        return self.pool.lookup(keys[i], chunk) or 0

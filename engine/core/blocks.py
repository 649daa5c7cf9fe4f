"""KV blocks: who holds which block of the paged cache, and the prefix cache over full blocks.

The KV cache is `num_blocks` blocks of `BLOCK_SIZE` positions (engine.core.kv_cache); a
sequence's `block_table` lists the blocks its tokens fill, in order. Block 0 is the scratch block
that padding tokens write to: it is never handed out.

Prefix cache: a full block whose tokens are computed is registered under the hash of its tokens
and of the hash of the block before it (so a hash names the whole prefix up to the block's end).
A newcomer whose prompt starts with registered blocks takes them instead of computing them. Blocks
are reference counted: any number of sequences share one read-only (a sequence only writes past
its shared prefix, into blocks of its own). A block nobody holds is free but keeps its tokens'
keys and values; free blocks are handed out least recently freed first (a finished sequence's
blocks are freed last-block-first, so a prefix outlives its tail), and a registered block leaves
the cache only when it is handed out again. No torch here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

BLOCK_SIZE = 16  # positions per block; engine.model.attention.KV_BLOCK is a multiple of it


def blocks_for(tokens: int) -> int:
    """Blocks that hold `tokens` positions."""
    return -(-tokens // BLOCK_SIZE)


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    """The prefix cache's key of a full block: its tokens and its parent block's key."""
    return hash((parent, tokens))


def prefix_keys(keys: list[int], tokens: list[int], full: int) -> list[int]:
    """`keys` (the prefix-cache keys of a sequence's first blocks) extended to its first `full`."""
    for i in range(len(keys), full):
        chunk = tuple(tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
        keys.append(block_hash(keys[i - 1] if i else None, chunk))
    return keys


@dataclass
class _Block:
    ref: int = 0
    key: int | None = None  # the prefix-cache hash, once the block is full and computed
    tokens: tuple[int, ...] = ()  # the tokens hashed (to rule out hash collisions)


class BlockPool:
    """Blocks 1..num_blocks-1 for sequences, with reference counts and the prefix cache.

    `caching` off: no block is ever looked up by hash (the n choices of one request still share
    their prompt's blocks, by block table: engine.core.scheduler).
    """

    def __init__(self, num_blocks: int, caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self._by_key: dict[int, int] = {}

    @property
    def capacity(self) -> int:
        """Blocks sequences may hold (all but the scratch block)."""
        return self.num_blocks - 1

    @property
    def free_count(self) -> int:
        """Blocks nobody holds (cached or not): what new allocations may take."""
        return len(self._free)

    @property
    def used_count(self) -> int:
        return self.capacity - len(self._free)

    def match(self, tokens: list[int], limit: int) -> list[int]:
        """The registered blocks that hold `tokens`' leading full blocks, within the first `limit`
        tokens (looked up only; `take` them to hold them)."""
        if not self.caching:
            return []
        found: list[int] = []
        parent: int | None = None
        for start in range(0, limit - BLOCK_SIZE + 1, BLOCK_SIZE):
            chunk = tuple(tokens[start : start + BLOCK_SIZE])
            key = block_hash(parent, chunk)
            block = self._by_key.get(key)
            if block is None or self._blocks[block].tokens != chunk:
                break
            found.append(block)
            parent = key
        return found

    def cost(self, blocks: list[int]) -> int:
        """How many of `blocks` are free now (taking them uses up free blocks)."""
        return sum(1 for b in blocks if self._blocks[b].ref == 0)

    def take(self, blocks: list[int]) -> None:
        """Hold `blocks` (shared, read-only): one more reference each."""
        for b in blocks:
            block = self._blocks[b]
            if block.ref == 0:
                del self._free[b]
            block.ref += 1

    def new(self) -> int | None:
        """A block of one's own (its old contents forgotten), or None when every block is held."""
        if not self._free:
            return None
        b, _ = self._free.popitem(last=False)
        block = self._blocks[b]
        if block.key is not None and self._by_key.get(block.key) == b:
            del self._by_key[block.key]
        block.ref, block.key, block.tokens = 1, None, ()
        return b

    def release(self, table: list[int]) -> None:
        """Drop one reference to each block of `table`; blocks nobody holds become free (cached
        ones at the recent end, last block first; the others first in line to be reused)."""
        for b in reversed(table):
            block = self._blocks[b]
            block.ref -= 1
            assert block.ref >= 0, f"block {b} released twice"
            if block.ref == 0:
                self._free[b] = None
                if block.key is None:
                    self._free.move_to_end(b, last=False)

    def label(self, b: int, key: int, tokens: tuple[int, ...]) -> None:
        """Register block `b` (held, computed) under prefix-cache `key` (engine.core.window)."""
        block = self._blocks[b]
        if block.key is None:
            block.key, block.tokens = key, tokens
            self._by_key.setdefault(key, b)

    def lookup(self, key: int, tokens: tuple[int, ...]) -> int | None:
        """The registered block of `key` holding `tokens`, held or free, or None."""
        b = self._by_key.get(key)
        return b if b is not None and self._blocks[b].tokens == tokens else None

    def register(
        self, table: list[int], keys: list[int], tokens: list[int], start: int, computed: int
    ) -> int:
        """Register the full, computed blocks of a sequence from block index `start` on, under the
        sequence's prefix keys `keys` (extended here as far as needed: `prefix_keys`); returns the
        index of the first block not registered (the caller's next `start`)."""
        full = min(computed // BLOCK_SIZE, len(table))
        if not self.caching:
            return full
        prefix_keys(keys, tokens, full)
        for i in range(start, full):
            self.label(table[i], keys[i], tuple(tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]))
        return full
        parent = self._blocks[table[start - 1]].key if start > 0 else None
        for i in range(start, full):
            block = self._blocks[table[i]]
            if block.key is None:
                chunk = tuple(tokens[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
                block.key, block.tokens = block_hash(parent, chunk), chunk
                self._by_key.setdefault(block.key, table[i])
            parent = block.key
        return full

"""KV slot ownership and prefix reuse.

A slot that a finished sequence leaves behind keeps its tokens' keys and values. A new
request takes the free slot whose kept tokens share the longest prefix with its prompt and
starts computing after that prefix (prefix caching without copying). Ties go to the lowest
slot number, which keeps the running slots packed near 0 so that decode attention reads
a small window of the cache.
"""

from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SlotPool:
    """Slots 1..num_slots (slot 0 is the scratch slot for padding tokens)."""

    def __init__(self, num_slots: int) -> None:
        self._free: dict[int, list[int]] = {s: [] for s in range(1, num_slots + 1)}

    @property
    def free_count(self) -> int:
        return len(self._free)

    def best_cached(self, prompt: list[int]) -> int:
        """How many of `prompt`'s tokens the best free slot holds (what `acquire` would reuse)."""
        limit = len(prompt) - 1
        best = 0
        for kept in self._free.values():
            if kept and kept[0] == prompt[0]:
                best = max(best, min(common_prefix(kept, prompt), limit))
        return best

    def acquire(self, prompt: list[int]) -> tuple[int, int]:
        """Take a free slot for `prompt`; returns (slot, number of prompt tokens already cached).

        At least the last prompt token is always left to compute: its logits give the first
        output token.
        """
        best, best_len = min(self._free), -1
        limit = len(prompt) - 1
        for slot, kept in self._free.items():
            n = common_prefix(kept, prompt) if kept and kept[0] == prompt[0] else 0
            n = min(n, limit)
            if n > best_len or (n == best_len and slot < best):
                best, best_len = slot, n
        del self._free[best]
        return best, max(best_len, 0)

    def release(self, slot: int, cached_tokens: list[int]) -> None:
        """Give `slot` back; `cached_tokens` are the tokens whose KV the slot now holds."""
        self._free[slot] = cached_tokens

"""Pre-allocated KV memory: one fixed slot per running sequence, written in place.

Layout per layer: `k[layer]: [num_slots, kv_heads, max_len, head_dim]`. Slot 0 is a scratch
slot that padding tokens write to; sequences get slots 1..num_slots-1. A slot keeps its
tokens after its sequence finishes, so a later request with the same prefix can take the
slot over and skip recomputing it (see `engine.core.slots`).

The tensors come from `torch.empty`, so untouched pages cost no memory; positions are
zeroed lazily, the first time a step reads them, so no garbage (NaN) ever meets a zero
attention weight.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, num_slots, kv_heads, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.num_slots = num_slots
        self._clean = [0] * num_slots  # positions [0, _clean[s]) hold finite values

    def ensure_clean(self, slots: range | list[int], length: int) -> None:
        """Make positions [0, length) of each slot safe to read (written or zeroed)."""
        for s in slots:
            start = self._clean[s]
            if start < length:
                self.k[:, s, :, start:length].zero_()
                self.v[:, s, :, start:length].zero_()
                self._clean[s] = length

    def copy_prefix(self, src: int, dst: int, n_tokens: int) -> None:
        """Copy the keys and values of positions [0, n_tokens) from slot `src` into slot `dst`.

        Used to share a prompt's prefill between the n choices of one request.
        """
        self.k[:, dst, :, :n_tokens] = self.k[:, src, :, :n_tokens]
        self.v[:, dst, :, :n_tokens] = self.v[:, src, :, :n_tokens]
        self._clean[dst] = max(self._clean[dst], n_tokens)

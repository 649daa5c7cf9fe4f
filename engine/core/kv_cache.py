"""Pre-allocated paged KV memory: fixed-size blocks that sequences fill through their block tables.

Layout per layer: `k[layer]: [kv_heads, num_blocks, BLOCK_SIZE, head_dim]` (heads first, so that a
sequence's blocks are gathered by one `index_select` into keys of whole contiguous heads). Block 0 is the
scratch block that padding tokens write to and padded block tables point at; which sequence holds
which block is `engine.core.blocks`' business.

The tensors come from `torch.empty`, so untouched pages cost no memory on a CPU; blocks are
zeroed lazily, before a step first uses them, so no garbage (NaN) ever meets a zero attention
weight. Blocks are handed out lowest first until each has been used once, so one high-water mark
says which blocks are clean.
"""

from __future__ import annotations

import torch

from engine.core.blocks import BLOCK_SIZE


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_layers, kv_heads, num_blocks, BLOCK_SIZE, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self._clean = 0  # blocks [0, _clean) hold finite values
        self._gathered: list[torch.Tensor] = []  # CPU: the buffers keys and values are gathered into
        self.ensure_clean(0)

    def ensure_clean(self, block: int) -> None:
        """Make blocks [0, block] safe to read (written or zeroed)."""
        if block >= self._clean:
            self.k[:, :, self._clean : block + 1].zero_()
            self.v[:, :, self._clean : block + 1].zero_()
            self._clean = block + 1

    def gather_buffers(self, numel: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """On a CPU, two reused flat buffers of at least `numel` elements to gather keys and values
        into (a fresh multi-MB tensor per layer costs more in page faults than the copy itself);
        None on other devices (a CUDA graph allocates from its own pool)."""
        if self.k.device.type != "cpu":
            return None
        if not self._gathered or self._gathered[0].numel() < numel:
            self._gathered = [torch.empty(numel, dtype=self.k.dtype) for _ in range(2)]
        k, v = self._gathered
        return k[:numel], v[:numel]

    def copy_block(self, src: int, dst: int) -> None:
        """Copy block `src`'s keys and values into block `dst` (a shared prompt's last, partial
        block: the copy-on-write of the prefix cache)."""
        self.ensure_clean(max(src, dst))
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]

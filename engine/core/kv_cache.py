"""Pre-allocated paged KV memory: fixed-size blocks that sequences fill through their block tables.

Layout per layer: `k[layer]: [kv_heads, num_blocks, BLOCK_SIZE, head_dim]` (heads first: seen as
`[kv_heads * num_blocks, BLOCK_SIZE * head_dim]`, any rows' blocks are gathered by one `index_select`
into `[rows, kv_heads, length, head_dim]`, contiguous: engine.model.attention). Block 0 is the
scratch block that padding tokens write to and padded block tables point at; which sequence holds
which block is `engine.core.blocks`' business.

The cache is zeroed when it is made: no garbage (NaN) ever meets a zero attention weight, and on a
CPU its pages are all touched at load, so the process's memory does not grow as the prefix cache
fills (a growing cache would look like a leak, and would surprise whoever sized the machine).
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
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks = num_blocks
        self._gathered: list[torch.Tensor] = []  # CPU: the buffers keys and values are gathered into

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
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]

"""Pre-allocated paged KV memory: fixed-size blocks that sequences fill through their block tables.

Layout per layer (`kv(layer)`: its keys and values): `[kv_heads, num_blocks, BLOCK_SIZE, head_dim]`
(heads first: seen as `[kv_heads * num_blocks, BLOCK_SIZE * head_dim]`, any rows' blocks are
gathered by one `index_select` into `[rows, kv_heads, length, head_dim]`, contiguous:
engine.model.attention). Block 0 is the
scratch block that padding tokens write to and padded block tables point at; which sequence holds
which block is `engine.core.blocks`' business.

The cache reads as zeros until written: no garbage (NaN) ever meets a zero attention weight. On a
GPU it is zeroed when it is made. On a CPU it is anonymous mapped memory (zero by the kernel's
promise), so a page becomes resident only when a block on it is first written: a started server
holds what its sequences have used, and grows up to the whole budget (`kv_cache_tokens`) as the
prefix cache fills, never past it.
"""

from __future__ import annotations

import mmap

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
        layers: list[int] | None = None,
    ) -> None:
        """`layers`: the model's layers this cache holds, in order (default: all `num_layers`; a
        model with sliding-window layers keeps those in a cache of their own, engine.core.window)."""
        self.layers = list(range(num_layers)) if layers is None else layers
        assert len(self.layers) == num_layers
        self._at = {layer: i for i, layer in enumerate(self.layers)}
        shape = (num_layers, kv_heads, num_blocks, BLOCK_SIZE, head_dim)
        self.k = _zeros(shape, dtype, device)
        self.v = _zeros(shape, dtype, device)
        self.num_blocks = num_blocks
        self._gathered: list[torch.Tensor] = []  # CPU: the buffers keys and values are gathered into

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values [kv_heads, num_blocks, BLOCK_SIZE, head_dim] of the model's `layer`."""
        i = self._at[layer]
        return self.k[i], self.v[i]

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


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor; on a CPU, over fresh anonymous pages, resident only once written."""
    if device.type != "cpu" or 0 in shape:  # (no layer left: every one kept apart, sliding)
        return torch.zeros(shape, dtype=dtype, device=device)
    numel = 1
    for n in shape:
        numel *= n
    pages = mmap.mmap(-1, max(1, numel * dtype.itemsize))  # the tensor keeps the mapping alive
    return torch.frombuffer(pages, dtype=dtype, count=numel).view(shape)

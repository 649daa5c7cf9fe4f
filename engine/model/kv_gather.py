"""Whole blocks of a paged KV cache copied out in position order: the keys and values of a set of
block tables as one contiguous `[rows, Hkv, L, D]` (engine.model.attention's aten path, where
Hearth's CPU attention op is not built, and the GPU's gathered fallback)."""

from __future__ import annotations

import torch


def flat_index(tables: torch.Tensor, kv_heads: int, num_blocks: int) -> torch.Tensor:
    """For block tables [R, N]: the rows, in order, of a layer's cache seen as
    [kv_heads * num_blocks, BLOCK_SIZE * D] that make up [R, Hkv, N * BLOCK_SIZE, D]."""
    heads = torch.arange(kv_heads, device=tables.device) * num_blocks
    return (heads[None, :, None] + tables[:, None, :]).reshape(-1)


def gather(
    cache: torch.Tensor,
    tables: torch.Tensor,
    out: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """cache [Hkv, blocks, BLOCK_SIZE, D], tables [R, N] -> [R, Hkv, N * BLOCK_SIZE, D], contiguous:
    each row's keys (or values) in position order, in one copy of whole blocks (into `out`, a flat
    buffer of at least the size, when given; `index`: `flat_index` of the tables, when known)."""
    rows, n = tables.shape
    hkv, blocks, size, d = cache.shape
    index = flat_index(tables, hkv, blocks) if index is None else index
    flat = cache.view(hkv * blocks, size * d)
    if out is None:
        got = flat.index_select(0, index)
    else:
        got = torch.index_select(flat, 0, index, out=out[: index.numel() * size * d].view(-1, size * d))
    return got.view(rows, hkv, n * size, d)

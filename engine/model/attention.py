"""Attention over the paged KV cache, plugged into transformers' attention interface.

One engine step runs every scheduled token of every sequence as one packed row
(`input_ids: [1, T]`): decode tokens first (one per decoding sequence, plus padding that
rounds T up to a multiple of 4), then prefill chunks. The model's own layers do the
projections, norms and rotary embeddings; this function writes the new keys and values
into their blocks (engine.core.kv_cache) and attends over each sequence's cached prefix.

Each decode row, and each prefill chunk, reads its keys and values gathered out of the cache
through its block table (padded with the scratch block 0 to the step's key length), so a decode
step's shapes depend only on the number of rows and `decode_kv_len`: a recorded graph
(engine.model.decode_graphs) replays for any placement of the blocks.

`torch.nn.functional.scaled_dot_product_attention` runs the products (flash or memory-efficient
kernels), except on CPU in float32: written out there (scores, float32 softmax, blocked `probs @ V`).

Batch invariance: greedy output must not depend on which other requests share the batch.
CPU BLAS kernels give a row different bits depending on where it sits in a matrix, so every
product here keeps the same shape class for a given row: query rows are padded to a
multiple of 4 per (row, kv head), key lengths are rounded up to whole `KV_BLOCK`s, and
`probs @ V` is summed block by block in a fixed order, so padding only ever adds exact zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from engine.core.blocks import BLOCK_SIZE
from engine.core.kv_cache import PagedKVCache

KV_BLOCK = 64  # key lengths are multiples of this (a whole number of the cache's blocks)
ROW_MULTIPLE = 4
assert KV_BLOCK % BLOCK_SIZE == 0


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class PrefillChunk:
    """`count` prompt tokens at positions [start_pos, start_pos + count) of one sequence, whose
    block table (padded with 0 to `kv_len // BLOCK_SIZE` blocks) is `table`."""

    token_start: int  # index of the chunk's first token in the packed row
    count: int
    table: torch.Tensor  # [kv_len // BLOCK_SIZE]
    start_pos: int

    @property
    def kv_len(self) -> int:
        return round_up(self.start_pos + self.count, KV_BLOCK)


@dataclass
class StepMeta:
    """Everything attention needs to know about one packed step. Built once, read by every layer."""

    cache: PagedKVCache
    write_blocks: torch.Tensor  # [T] block each token's keys and values go to
    write_offsets: torch.Tensor  # [T] position in that block
    write_pos: torch.Tensor  # [T] position of each token in its sequence
    decode_tokens: int  # the first `decode_tokens` tokens are decode tokens (incl. padding)
    decode_tables: torch.Tensor  # [decode_tokens, decode_kv_len // BLOCK_SIZE] block tables
    decode_lens: torch.Tensor  # [decode_tokens] kv length of each decode token (1 for padding)
    decode_kv_len: int  # multiple of KV_BLOCK
    prefills: list[PrefillChunk]
    _bias: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)

    def decode_bias(self, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [decode_tokens, 1, 1, decode_kv_len]: 0 where a row may look, -inf elsewhere."""
        key = ("decode", window, dtype)
        if key not in self._bias:
            j = torch.arange(self.decode_kv_len, device=self.decode_lens.device)[None, :]
            lens = self.decode_lens[:, None]
            ok = j < lens
            if window is not None:
                ok &= j >= lens - window
            self._bias[key] = _additive(ok, dtype)[:, None, None, :]
        return self._bias[key]

    def prefill_bias(self, i: int, groups: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive causal mask [rows, kv_len] for chunk i; rows = count * groups rounded up."""
        key = ("prefill", i, groups, window, dtype)
        if key not in self._bias:
            chunk = self.prefills[i]
            rows = round_up(chunk.count * groups, ROW_MULTIPLE)
            device = self.write_pos.device
            pos = chunk.start_pos + torch.arange(rows, device=device) // groups  # [rows]
            pos = pos.clamp(max=chunk.start_pos + chunk.count - 1)
            j = torch.arange(chunk.kv_len, device=device)[None, :]
            ok = j <= pos[:, None]
            if window is not None:
                ok &= j > pos[:, None] - window
            self._bias[key] = _additive(ok, dtype)
        return self._bias[key]


def _additive(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `ok`, -inf elsewhere; no host-to-device copy (a CUDA graph may be capturing)."""
    return torch.zeros(ok.shape, dtype=dtype, device=ok.device).masked_fill_(~ok, float("-inf"))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, computed in float32 (as transformers does) for bf16/fp16 scores."""
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """softmax(cap(q k^T * scale) + bias) v for q [..., M, D], k/v [..., L, D], bias broadcastable to
    [..., M, L]; cap(s) = softcap * tanh(s / softcap) where a soft-cap is given (Gemma 2), else s.

    SDPA's fused kernels, except on CPU in float32 or with a soft-cap: written out there (see
    `_fused_on_cpu`).
    """
    if softcap is None and (q.device.type != "cpu" or _fused_on_cpu(q.dtype)):
        if q.dim() == 3:  # [H, M, D]: the CPU flash kernel takes 4-D inputs (3-D ones take the math path)
            return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias, scale=scale)[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap).mul_(softcap)
    scores.add_(bias)
    return blocked_pv(_softmax(scores), v)


def _fused_on_cpu(dtype: torch.dtype) -> bool:
    """Whether attention on CPU runs SDPA's flash kernel. In bfloat16 it is ~5x faster than the
    written-out products at one stream, and a query row's bits were measured independent of the
    other rows (decode rows of other slots, the rest of a prefill chunk, from 4 rows up), of the
    key length a step pads to, and of whether the row is decoded or prefilled: batch invariance
    holds. float32's flash kernel changes a row's bits with the key length: written out there."""
    return dtype == torch.bfloat16


def blocked_pv(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs [..., M, L] @ v [..., L, D], summed over KV_BLOCK-sized blocks in order."""
    length = probs.shape[-1]
    out = torch.matmul(probs[..., :KV_BLOCK], v[..., :KV_BLOCK, :])
    for b in range(KV_BLOCK, length, KV_BLOCK):
        out += torch.matmul(probs[..., b : b + KV_BLOCK], v[..., b : b + KV_BLOCK, :])
    return out


def gather(cache: torch.Tensor, tables: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """cache [Hkv, blocks, BLOCK_SIZE, D], tables [R, N] -> [R, Hkv, N * BLOCK_SIZE, D]: each row's
    keys (or values) in position order, in one copy of whole blocks (into `out`, a flat buffer of
    the size, when given), as a view whose first two dims are swapped: each (row, head) matrix
    [N * BLOCK_SIZE, D] is contiguous."""
    rows, n = tables.shape
    hkv, _, size, d = cache.shape
    flat = tables.reshape(-1)
    if out is None:
        got = cache.index_select(1, flat)  # [Hkv, R * N, BLOCK_SIZE, D]
    else:
        got = torch.index_select(cache, 1, flat, out=out.view(hkv, rows * n, size, d))
    return got.view(hkv, rows, n * size, d).transpose(0, 1)


def _gather_kv(
    step: StepMeta, kc: torch.Tensor, vc: torch.Tensor, tables: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [R, Hkv, L, D] of the rows of `tables` [R, N] (see `gather`)."""
    buffers = step.cache.gather_buffers(kc[:, :1].numel() * tables.numel())
    if buffers is None:
        return gather(kc, tables), gather(vc, tables)
    return gather(kc, tables, buffers[0]), gather(vc, tables, buffers[1])


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: query [1, Hq, T, D], key/value [1, Hkv, T, D]."""
    step: StepMeta = kwargs["hearth_step"]
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    kc, vc = step.cache.k[layer], step.cache.v[layer]  # [Hkv, blocks, BLOCK_SIZE, D]
    kc[:, step.write_blocks, step.write_offsets] = key[0]
    vc[:, step.write_blocks, step.write_offsets] = value[0]

    _, hq, t, d = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    scale = scaling if scaling is not None else d**-0.5
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    out = query.new_empty(t, hq, d)

    n_dec = step.decode_tokens
    if n_dec:
        k, v = _gather_kv(step, kc, vc, step.decode_tables)  # [n_dec, Hkv, L, D]
        rows = round_up(g, ROW_MULTIPLE) if q.device.type == "cpu" else g  # same shape class as prefill
        qd = query.new_zeros(n_dec, hkv, rows, d)
        qd[:, :, :g] = q[:n_dec].reshape(n_dec, hkv, g, d)
        bias = step.decode_bias(sliding_window, q.dtype)
        o = attend(qd, k, v, bias, scale, softcap)  # [n_dec, Hkv, rows, D]
        out[:n_dec] = o[:, :, :g].reshape(n_dec, hq, d)

    for i, chunk in enumerate(step.prefills):
        c, s0 = chunk.count, chunk.token_start
        rows = round_up(c * g, ROW_MULTIPLE)
        qc = q[s0 : s0 + c].reshape(c, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, c * g, d)
        if rows != c * g:
            qc = torch.cat([qc, qc.new_zeros(hkv, rows - c * g, d)], dim=1)
        bias = step.prefill_bias(i, g, sliding_window, q.dtype)  # [rows, L]
        kp, vp = (t[0] for t in _gather_kv(step, kc, vc, chunk.table[None]))  # [Hkv, L, D]
        o = attend(qc, kp, vp, bias, scale, softcap)  # [Hkv, rows, D]
        out[s0 : s0 + c] = o[:, : c * g].reshape(hkv, c, g, d).permute(1, 0, 2, 3).reshape(c, hq, d)

    return out.unsqueeze(0), None

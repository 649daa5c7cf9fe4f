"""Attention over the paged KV cache, plugged into transformers' attention interface.

One engine step runs every scheduled token of every sequence as one packed row
(`input_ids: [1, T]`): decode tokens first (one per decoding sequence, plus padding that
rounds T up to a multiple of 4), then prefill chunks. The model's own layers do the
projections, norms and rotary embeddings; this function writes the new keys and values
into their blocks (engine.core.kv_cache) and attends over each sequence's cached prefix.

Each decode row, and each prefill chunk, reads its keys and values through its block table
(padded with the scratch block 0 to its group's key length): in place on CPU (`hearth::attend`),
elsewhere gathered out of the cache (and on CPU where that op is not built), so a decode
step's shapes depend only on its groups' rows and key lengths: a recorded graph
(engine.model.decode_graphs, one group) replays for any placement of the blocks. A gather copies
every key and value a group reads, each layer: its cost is the bytes (`index_select` runs at ~90 %
of a plain copy's speed here). So an eager step splits its decode rows (longest first) into groups
of similar key lengths where that saves more than a group costs (`decode_groups`), and a group
gathers straight into the contiguous `[rows, Hkv, L, D]` that attention reads (one flat index per
group and step), which the float32 products take without copying again.

`torch.nn.functional.scaled_dot_product_attention` runs the products (flash or memory-efficient
kernels), except on CPU: there Hearth's own op does it in float32 and bfloat16 (`hearth::attend`,
`lean/attend.cpp`: the cache read in place through the block tables, each query row over its own
unmasked keys only, a row's bits its own), over the keys up to a prefill chunk's last row. Where
that op is not built (and for Gemma 2's soft-capped scores), the keys and values are gathered and
bfloat16 takes SDPA's flash kernel, float32 aten's products written out.

Batch invariance: greedy output must not depend on which other requests share the batch.
CPU BLAS kernels give a row different bits depending on where it sits in a matrix, so every
product here (on the aten paths; `hearth::attend` needs none of it) keeps the same shape class for a
given row: query rows are padded to a multiple of 4 per (row, kv head), key lengths are rounded
up to whole `KV_BLOCK`s (whole `KV_SPLIT`s past one: `kv_length`), and `probs @ V` is summed
block by block in a fixed order, so padding only ever adds exact zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from engine.core.blocks import BLOCK_SIZE
from engine.core.kv_cache import PagedKVCache
from engine.model.kv_gather import flat_index, gather

KV_BLOCK = 64  # key lengths are multiples of this (a whole number of the cache's blocks)
# The CPU flash kernel's key block. Past one such block, the length of a row's last, partly masked
# block moved its bits (a row seeing 854 keys: padded to 896 or to 1024, different outputs), while
# whole masked blocks do not: so key lengths beyond it are whole key blocks (`kv_length`).
KV_SPLIT = 512
ROW_MULTIPLE = 4
assert KV_BLOCK % BLOCK_SIZE == 0 and KV_SPLIT % KV_BLOCK == 0


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def kv_length(n: int) -> int:
    """The key length a row (or chunk) that sees n keys attends over: whole KV_BLOCKs up to
    KV_SPLIT, whole KV_SPLITs beyond. Any longer length the step pads it to (another row's, a
    recorded bucket's) adds only whole masked key blocks, which leave its bits as they are."""
    return round_up(n, KV_BLOCK if n <= KV_SPLIT else KV_SPLIT)


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
        return kv_length(self.start_pos + self.count)

    def first_key(self, window: int | None) -> int:
        """The first key the chunk attends from: 0, or under a sliding window, the start of the
        key block (KV_SPLIT) where its first row's window starts: the blocks before, no row of the
        chunk reads, and the blocks it keeps sit where they sit in any other chunking."""
        if window is None or self.kv_len <= KV_SPLIT:
            return 0
        return max(0, self.start_pos - window + 1) // KV_SPLIT * KV_SPLIT


@dataclass
class DecodeGroup:
    """Decode rows [start, start + count) of a step, attending over `kv_len` keys (a multiple of
    KV_BLOCK) through their block tables."""

    start: int
    count: int
    tables: torch.Tensor  # [count, kv_len // BLOCK_SIZE], padded with the scratch block 0
    lens: torch.Tensor  # [count] each row's own key length (1 for a padding row)
    kv_len: int


# A group's fixed cost (its gathers', mask's and attention's calls), in (row x key position)s
# gathered and attended: ~60-80 us a layer on one core of the 2-core Xeon, where one costs ~0.17 us
GROUP_COST = 8 * KV_BLOCK


def decode_groups(kv_lens: list[int]) -> list[tuple[int, int, int]]:
    """Split decode rows whose key lengths (multiples of KV_BLOCK) are `kv_lens`, longest first,
    into consecutive groups (start, count, key length): the fewest (row x key position)s gathered
    and attended, counting GROUP_COST for each group (an exact search over the distinct lengths)."""
    assert kv_lens == sorted(kv_lens, reverse=True)
    runs: list[tuple[int, int]] = []  # (length, rows of that length), longest first
    for n in kv_lens:
        if runs and runs[-1][0] == n:
            runs[-1] = (n, runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    # best[i]: the cheapest split of runs[i:], as (cost, index where its first group ends)
    best: list[tuple[int, int]] = [(0, len(runs))] * (len(runs) + 1)
    for i in range(len(runs) - 1, -1, -1):
        rows, options = 0, []
        for j in range(i, len(runs)):
            rows += runs[j][1]
            options.append((rows * runs[i][0] + GROUP_COST + best[j + 1][0], j + 1))
        best[i] = min(options)
    groups, i, start = [], 0, 0
    while i < len(runs):
        end = best[i][1]
        count = sum(c for _, c in runs[i:end])
        groups.append((start, count, runs[i][0]))
        start, i = start + count, end
    return groups


@dataclass
class StepMeta:
    """Everything attention needs to know about one packed step. Built once, read by every layer."""

    cache: PagedKVCache
    write_blocks: torch.Tensor  # [T] block each token's keys and values go to
    write_offsets: torch.Tensor  # [T] position in that block
    write_pos: torch.Tensor  # [T] position of each token in its sequence
    decode_tokens: int  # the first `decode_tokens` tokens are decode tokens (incl. padding)
    decode: list[DecodeGroup]  # those tokens' rows, in groups that cover them in order
    prefills: list[PrefillChunk]
    # the same step over the sliding-window layers' own cache and blocks (engine.core.window)
    window: StepMeta | None = None
    _bias: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    _index: dict[Any, torch.Tensor] = field(default_factory=dict)

    def over(self, window: int | None) -> StepMeta:
        """This step as a layer with `window` (None: global) reads and writes it."""
        return self.window if window is not None and self.window is not None else self

    def decode_bias(self, i: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [count, 1, 1, kv_len] of decode group i: 0 where a row may look, -inf elsewhere."""
        key = ("decode", i, window, dtype)
        if key not in self._bias:
            group = self.decode[i]
            j = torch.arange(group.kv_len, device=group.lens.device)[None, :]
            lens = group.lens[:, None]
            ok = j < lens
            if window is not None:
                ok &= j >= lens - window
            self._bias[key] = _additive(ok, dtype)[:, None, None, :]
        return self._bias[key]

    def gather_index(self, key: Any, tables: torch.Tensor, kv_heads: int) -> torch.Tensor:
        """`flat_index(tables, ...)` of this step's cache, made once per step for every layer
        (`key`: the decode group's index, or (-1 - i, first key, last key) for prefill chunk i)."""
        if key not in self._index:
            self._index[key] = flat_index(tables, kv_heads, self.cache.num_blocks)
        return self._index[key]

    def prefill_bias(self, i: int, groups: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive causal mask [rows, kv_len - first_key(window)] for chunk i (its keys from
        `first_key` on); rows = count * groups rounded up."""
        key = ("prefill", i, groups, window, dtype)
        if key not in self._bias:
            chunk = self.prefills[i]
            rows = round_up(chunk.count * groups, ROW_MULTIPLE)
            device = self.write_pos.device
            pos = chunk.start_pos + torch.arange(rows, device=device) // groups  # [rows]
            pos = pos.clamp(max=chunk.start_pos + chunk.count - 1)
            j = torch.arange(chunk.first_key(window), chunk.kv_len, device=device)[None, :]
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

    On CPU Hearth's kernel where it is built (`hearth::attend`, float32 and bfloat16); else SDPA's
    fused kernels, except on CPU in float32 or with a soft-cap: written out there (see `_fused_on_cpu`).
    """
    if softcap is None and _attend_kernel(q, k):  # the ops below as one (lean/attend.cpp)
        return torch.ops.hearth.attend(q, k, v, None, bias.float(), scale)
    if softcap is None and (q.device.type != "cpu" or _fused_on_cpu(q.dtype)):
        if q.dim() == 3:  # [H, M, D]: the CPU flash kernel takes 4-D inputs (3-D ones take the math path)
            return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=bias, scale=scale)[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores.mul_(scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap).mul_(softcap)
    scores.add_(bias)
    return blocked_pv(_softmax(scores), v)


def _attend_kernel(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether Hearth's CPU kernel takes this attention: float32 or bfloat16 on the CPU, head dim and
    key length multiples of 16, the kernels loaded and built for AVX-512."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
        and q.shape[-1] % 16 == 0
        and q.shape[-1] <= 512
        and k.shape[-2] % 16 == 0
        and _kernels_loaded()
    )


@functools.cache
def _kernels_loaded() -> bool:
    from engine.model.lean import fused  # the lean package imports this module

    return fused.f32_dot()


def _fused_on_cpu(dtype: torch.dtype) -> bool:
    """Whether attention on CPU runs SDPA's flash kernel where Hearth's is not built. In bfloat16
    it is ~5x faster than the written-out products at one stream, and a query row's bits were
    measured independent of the other rows (decode rows of other slots, the rest of a prefill
    chunk, from 4 rows up), of the key length a step pads to (within one key block, and by whole
    key blocks: see KV_SPLIT), and of whether the row is decoded or prefilled: batch invariance
    holds. float32's flash kernel changes a row's bits with the key length: written out there."""
    return dtype == torch.bfloat16


def blocked_pv(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """probs [..., M, L] @ v [..., L, D], summed over KV_BLOCK-sized blocks in order."""
    length = probs.shape[-1]
    out = torch.matmul(probs[..., :KV_BLOCK], v[..., :KV_BLOCK, :])
    for b in range(KV_BLOCK, length, KV_BLOCK):
        out += torch.matmul(probs[..., b : b + KV_BLOCK], v[..., b : b + KV_BLOCK, :])
    return out


def _gather_kv(
    step: StepMeta, kc: torch.Tensor, vc: torch.Tensor, tables: torch.Tensor, key: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [R, Hkv, L, D] of the rows of `tables` [R, N] (see `gather`)."""
    index = step.gather_index(key, tables, kc.shape[0])
    buffers = step.cache.gather_buffers(kc[:, :1].numel() * tables.numel())
    if buffers is None:
        return gather(kc, tables, index=index), gather(vc, tables, index=index)
    return gather(kc, tables, buffers[0], index), gather(vc, tables, buffers[1], index)


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
    kc, vc = step.cache.kv(layer)  # [Hkv, blocks, BLOCK_SIZE, D]
    kc[:, step.write_blocks, step.write_offsets] = key[0]
    vc[:, step.write_blocks, step.write_offsets] = value[0]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = cached_attention(query[0].transpose(0, 1), kc, vc, step, scale, sliding_window, softcap)
    return out.unsqueeze(0), None


# decode attention reading the cache in place: (q [R, Hq, D], kc, vc, tables, lens, out, scale, window)
InPlaceDecode = Callable[..., None]


def cached_attention(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    step: StepMeta,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    in_place: InPlaceDecode | None = None,
) -> torch.Tensor:
    """Attention of the step's queries q [T, Hq, D] over the layer's cache kc/vc (this step's keys
    and values written already) -> [T, Hq, D]. Decode rows through `in_place` where given
    (engine.model.lean.gpu_kernels.paged_decode), else gathered; prompt chunks gathered."""
    t, hq, d = q.shape
    hkv = kc.shape[0]
    g = hq // hkv
    out = q.new_empty(t, hq, d)
    # CPU: Hearth's kernel reads the keys and values in place (no gathered copies)
    paged = softcap is None and _attend_kernel(q, kc) and kc.stride(1) == kc.shape[2] * d

    n_dec = step.decode_tokens
    if n_dec and in_place is not None:
        for group in step.decode:
            a, b = group.start, group.start + group.count
            in_place(q[a:b], kc, vc, group.tables, group.lens, out[a:b], scale, sliding_window)
    elif n_dec and paged:  # the cache read in place through the tables; q's rows as they are
        for i, group in enumerate(step.decode):
            a, b = group.start, group.start + group.count
            bias = step.decode_bias(i, sliding_window, torch.float32)
            qg = q[a:b].view(group.count, hkv, g, d)
            o = torch.ops.hearth.attend(qg, kc, vc, group.tables, bias, scale).view(group.count, hq, d)
            if group.count == t:  # the whole step (decode rows alone, one group)
                return o
            out[a:b] = o
    elif n_dec:
        rows = round_up(g, ROW_MULTIPLE) if q.device.type == "cpu" else g  # same shape class as prefill
        qd = q.new_zeros(n_dec, hkv, rows, d)
        qd[:, :, :g] = q[:n_dec].reshape(n_dec, hkv, g, d)
        for i, group in enumerate(step.decode):
            a, b = group.start, group.start + group.count
            bias = step.decode_bias(i, sliding_window, q.dtype)
            k, v = _gather_kv(step, kc, vc, group.tables, i)  # [count, Hkv, L, D]
            o = attend(qd[a:b], k, v, bias, scale, softcap)  # [count, Hkv, rows, D]
            out[a:b] = o[:, :, :g].reshape(group.count, hq, d)

    fused = not paged and softcap is None and (q.device.type != "cpu" or _fused_on_cpu(q.dtype))
    for i, chunk in enumerate(step.prefills):
        c, s0 = chunk.count, chunk.token_start
        rows = round_up(c * g, ROW_MULTIPLE)
        qc = q[s0 : s0 + c].reshape(c, hkv, g, d).permute(1, 0, 2, 3).reshape(hkv, c * g, d)
        if rows != c * g:
            qc = torch.cat([qc, qc.new_zeros(hkv, rows - c * g, d)], dim=1)
        first = chunk.first_key(sliding_window)  # a sliding window's keys only
        # written out, the key blocks past the chunk's last row are skipped (SDPA's flash kernel
        # takes whole KV_SPLITs: see kv_length); they would add only exact zeros
        last = chunk.kv_len if fused else round_up(chunk.start_pos + c, KV_BLOCK)
        bias_dtype = torch.float32 if paged else q.dtype
        bias = step.prefill_bias(i, g, sliding_window, bias_dtype)[:, : last - first]  # [rows, L]
        table = chunk.table[None, first // BLOCK_SIZE : last // BLOCK_SIZE]
        if paged:
            o = torch.ops.hearth.attend(qc[None], kc, vc, table, bias, scale)[0]
        else:
            kp, vp = (t[0] for t in _gather_kv(step, kc, vc, table, (-1 - i, first, last)))  # [Hkv, L, D]
            o = attend(qc, kp, vp, bias, scale, softcap)  # [Hkv, rows, D]
        out[s0 : s0 + c] = o[:, : c * g].reshape(hkv, c, g, d).permute(1, 0, 2, 3).reshape(c, hq, d)
    return out

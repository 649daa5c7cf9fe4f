"""Hearth's GPU kernels (Triton): a decode step's small ops per layer, fewer and fused.

Profiled on an H200 (docs/gpu-check-h200.md), a one-row decode step of a 1 B Llama was 424 kernels:
~330 small ones took as long as the products. Per layer the rotary embedding was ~5 of them, the
writes of the new key and value into the paged cache 2, attention 6 (the decode query padded into
place, the keys and values gathered out of the cache, SDPA, the output copied back), the gated
MLP's activation and product 2. Here:
- `rope_write`: the rotary embedding of every row's q and k heads, in place (its partial-rotary
  form too, and the heads' RMSNorm before it where the family has one), and the writes of the
  rotated key and the value into the cache: one kernel for every token of a step, decode or prompt.
- `paged_decode`: attention for decode rows, reading the keys and values in place through each
  row's block table (no gather), with an online softmax in float32 (its sliding window too): one
  kernel per step and layer (two past `SPLIT` keys). A program per (row, query head, `SPLIT` keys)
  sums over its row's own keys alone, in a fixed order: a row's bits do not depend on the other
  rows (batch invariance).
- `act_mul`: act(gate) * up of a gated MLP whose gate and up are one product.
They run on CUDA where Triton is installed (it comes with torch's CUDA builds), eagerly and inside
CUDA graphs alike; prompt rows keep the gather and SDPA (engine.model.attention).
`HEARTH_GPU_KERNELS=0` turns them off (to compare); `HEARTH_GPU_KERNELS=interpret` runs them on CPU
tensors under Triton's interpreter (`TRITON_INTERPRET=1` set before Triton is imported), which is how
the CPU tests check them against the torch ops.

Products in float32 never use TF32 here: every sum is an elementwise product reduced with `tl.sum`.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch

log = logging.getLogger("hearth.engine")

PAGES = 4  # cache blocks a decode program reads per iteration
# keys per decode program: a long row's keys are split over several programs (flash-decoding), whose
# partial sums one more kernel adds up in split order; where a row's keys end depends on the row
# alone, so its bits do not depend on the key length its step pads to (nor on the other rows)
SPLIT = 512


def _interpreted() -> bool:
    return os.environ.get("HEARTH_GPU_KERNELS") == "interpret" and os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton() -> Any:
    """The kernels, defined on first use (TRITON_INTERPRET is read when they are defined)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rope_write_kernel(
        qk, qk_row, v, v_row, cos, sin, cs_row, kc, vc, blocks, offsets, num_blocks, norm, eps,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, R: tl.constexpr,
        BS: tl.constexpr, NORM: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, BD)
        inside = d < D
        slot = (tl.load(blocks + t).to(tl.int64) * BS + tl.load(offsets + t)) * D
        if h < HQ + HKV:  # a query or key head: rotated in place (and a key written)
            head = qk + t.to(tl.int64) * qk_row + h * D
            x = tl.load(head + d, mask=inside, other=0.0).to(tl.float32)
            half = R // 2
            rotated = d < R
            partner = tl.where(d < half, d + half, d - half)
            xp = tl.load(head + partner, mask=rotated, other=0.0).to(tl.float32)
            if NORM:  # the head's RMSNorm first (Qwen3, Gemma 3), rounded as the torch ops round it
                rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
                w = norm + h * D
                x = x * rstd * tl.load(w + d, mask=inside, other=0.0).to(tl.float32)
                xp = xp * rstd * tl.load(w + partner, mask=rotated, other=0.0).to(tl.float32)
                x = x.to(qk.dtype.element_ty).to(tl.float32)
                xp = xp.to(qk.dtype.element_ty).to(tl.float32)
            c = tl.load(cos + t.to(tl.int64) * cs_row + d, mask=rotated, other=1.0).to(tl.float32)
            s = tl.load(sin + t.to(tl.int64) * cs_row + d, mask=rotated, other=0.0).to(tl.float32)
            y = tl.where(rotated, x * c + tl.where(d < half, -xp, xp) * s, x)
            tl.store(head + d, y.to(qk.dtype.element_ty), mask=inside)
            if h >= HQ:
                dst = kc + (h - HQ).to(tl.int64) * num_blocks * BS * D + slot
                tl.store(dst + d, y.to(kc.dtype.element_ty), mask=inside)
        else:  # a value head: written
            j = h - HQ - HKV
            x = tl.load(v + t.to(tl.int64) * v_row + j * D + d, mask=inside, other=0.0)
            dst = vc + j.to(tl.int64) * num_blocks * BS * D + slot
            tl.store(dst + d, x.to(vc.dtype.element_ty), mask=inside)

    @triton.jit
    def paged_decode_kernel(
        q, q_row, kc, vc, tables, table_row, lens, out, out_row, part, scale, window, num_blocks,
        G: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr, PAGES: tl.constexpr,
        SPLIT: tl.constexpr, SPLITS: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)  # this program's keys: [s * SPLIT, (s + 1) * SPLIT) of the row's
        d = tl.arange(0, BD)
        inside = d < D
        qv = tl.load(q + r.to(tl.int64) * q_row + h * D + d, mask=inside, other=0.0).to(tl.float32)
        length = tl.load(lens + r)
        first = tl.where(window > 0, tl.maximum(length - window, 0), 0)
        head = (h // G).to(tl.int64) * num_blocks * BS * D
        n = tl.arange(0, PAGES * BS)
        best = tl.zeros([1], tl.float32) - float("inf")
        total = tl.zeros([1], tl.float32)
        acc = tl.zeros([BD], tl.float32)
        step = PAGES * BS
        end = tl.minimum(length, (s + 1) * SPLIT)
        for start in range(tl.maximum(first // step * step, s * SPLIT), end, step):
            pos = start + n
            page = tl.load(tables + r.to(tl.int64) * table_row + pos // BS, mask=pos < end, other=0)
            rows = head + (page.to(tl.int64) * BS + pos % BS) * D
            seen = (pos < end) & (pos >= first)
            both = seen[:, None] & inside[None, :]
            k = tl.load(kc + rows[:, None] + d[None, :], mask=both, other=0.0).to(tl.float32)
            scores = tl.where(seen, tl.sum(k * qv[None, :], axis=1) * scale, float("-inf"))
            top = tl.maximum(best, tl.max(scores, axis=0))
            fade = tl.exp(best - top)
            p = tl.exp(scores - top)
            vv = tl.load(vc + rows[:, None] + d[None, :], mask=both, other=0.0).to(tl.float32)
            total = total * fade + tl.sum(p, axis=0)
            acc = acc * fade + tl.sum(p[:, None] * vv, axis=0)
            best = top
        if SPLITS == 1:
            o = acc / total
            tl.store(out + r.to(tl.int64) * out_row + h * D + d, o.to(out.dtype.element_ty), mask=inside)
        else:  # this split's running max, sum and weighted values, for `paged_reduce_kernel`
            slot = part + ((r.to(tl.int64) * tl.num_programs(1) + h) * SPLITS + s) * (BD + 2)
            one = tl.arange(0, 1)
            tl.store(slot + one, best)
            tl.store(slot + 1 + one, total)
            tl.store(slot + 2 + d, acc)

    @triton.jit
    def paged_reduce_kernel(part, out, out_row, D: tl.constexpr, BD: tl.constexpr, SPLITS: tl.constexpr):
        r = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, BD)
        one = tl.arange(0, 1)
        base = part + (r.to(tl.int64) * tl.num_programs(1) + h) * SPLITS * (BD + 2)
        best = tl.zeros([1], tl.float32) - float("inf")
        for s in range(SPLITS):
            best = tl.maximum(best, tl.load(base + s * (BD + 2) + one))
        total = tl.zeros([1], tl.float32)
        acc = tl.zeros([BD], tl.float32)
        for s in range(SPLITS):  # in split order: a split past the row's keys adds exact zeros
            slot = base + s * (BD + 2)
            w = tl.exp(tl.load(slot + one) - best)
            total += w * tl.load(slot + 1 + one)
            acc += w * tl.load(slot + 2 + d)
        o = acc / total
        tl.store(out + r.to(tl.int64) * out_row + h * D + d, o.to(out.dtype.element_ty), mask=d < D)

    @triton.jit
    def act_mul_kernel(x, x_row, out, out_row, N, SILU: tl.constexpr, BN: tl.constexpr):
        r = tl.program_id(0)
        i = tl.program_id(1) * BN + tl.arange(0, BN)
        inside = i < N
        row = x + r.to(tl.int64) * x_row
        g = tl.load(row + i, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(row + N + i, mask=inside, other=0.0).to(tl.float32)
        if SILU:
            a = g / (1.0 + tl.exp(-g))
        else:  # gelu, tanh approximation: 0.5 g (1 + tanh(y)) = g * sigmoid(2y)
            y = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            a = g / (1.0 + tl.exp(-2.0 * y))
        tl.store(out + r.to(tl.int64) * out_row + i, (a * u).to(out.dtype.element_ty), mask=inside)

    return triton, rope_write_kernel, (paged_decode_kernel, paged_reduce_kernel), act_mul_kernel


@functools.cache
def _importable() -> bool:
    try:
        _triton()
    except Exception as exc:  # no Triton: the torch ops do the work
        log.warning("Triton unavailable, the GPU decode step runs torch's ops: %.300s", exc)
        return False
    return True


@functools.cache
def self_check(
    device: torch.device,
    dtype: torch.dtype,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rotary: tuple[int, ...],
    norm_dtype: torch.dtype | None = None,
) -> bool:
    """Whether the kernels, compiled for a model of these shapes, give torch's results on `device`:
    each is run once on random inputs (which compiles it for these shapes, as the forward will call
    it; `norm_dtype`: the dtype of the q/k norms' weights, where the model has them) and compared.
    A failure is logged and the forward runs torch's ops instead: a Triton or driver this code was
    not tested with costs speed, never a request."""
    from engine.model.kv_gather import gather

    try:
        g = torch.Generator(device="cpu").manual_seed(0)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

        tol = 1e-4 if dtype == torch.float32 else 5e-2

        def close(got: torch.Tensor, want: torch.Tensor) -> None:
            torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)

        t, blocks, size = 3, 40, 16
        heads_all = heads + kv_heads
        for r in rotary:
            qkv = rand(t, (heads_all + kv_heads) * head_dim)
            qk = qkv[:, : heads_all * head_dim].view(t, heads_all, head_dim)
            v = qkv[:, heads_all * head_dim :].view(t, kv_heads, head_dim)
            cos, sin = rand(t, r), rand(t, r)
            norm, heads_in = None, qk.float()
            if norm_dtype is not None:  # the heads normed first, rounded to the dtype as the kernel does
                norm = (torch.rand(heads_all, head_dim, generator=g).to(device, norm_dtype) + 0.5, 1e-6)
                normed = torch.rms_norm(heads_in, (head_dim,), None, norm[1]) * norm[0].float()
                heads_in = normed.to(dtype).float()
            part, half = heads_in[..., :r], r // 2
            turned = torch.cat((-part[..., half:], part[..., :half]), dim=-1)
            want = heads_in.clone()
            want[..., :r] = part * cos[:, None].float() + turned * sin[:, None].float()
            kc, vc = rand(kv_heads, blocks, size, head_dim), rand(kv_heads, blocks, size, head_dim)
            where = torch.tensor([1, 2, 3], device=device)
            at = torch.tensor([0, 5, 15], device=device)
            rope_write(qk, v, cos, sin, kc, vc, where, at, norm)
            close(qk, want)
            close(kc[:, where, at], want[:, heads:].transpose(0, 1))
        tables = torch.stack([torch.arange(blocks).flip(0), torch.zeros(blocks, dtype=torch.long)]).to(device)
        lens = torch.tensor([600, 1], device=device)  # two splits of keys (and the reduce), one key
        q = rand(2, heads, head_dim)
        out = torch.empty_like(q)
        paged_decode(q, kc, vc, tables, lens, out, head_dim**-0.5, None)
        k, vv = gather(kc, tables).float(), gather(vc, tables).float()  # [2, Hkv, 640, D]
        for row, n in enumerate(lens.tolist()):
            kr = k[row, :, :n].repeat_interleave(heads // kv_heads, 0)  # [Hq, n, D]
            vr = vv[row, :, :n].repeat_interleave(heads // kv_heads, 0)
            probs = torch.softmax((q[row].float()[:, None] * kr).sum(-1) * head_dim**-0.5, -1)
            close(out[row], (probs[..., None] * vr).sum(1))
        x = rand(2, 64).float()
        want = torch.nn.functional.silu(x[:, :32]) * x[:, 32:]
        close(act_mul(x.to(dtype), True), want)
    except Exception as exc:  # a kernel that fails to compile, or computes something else
        log.warning("Hearth's GPU kernels failed their check on %s, running torch's ops: %.400s", device, exc)
        return False
    return True


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels run on tensors like `x`: on CUDA, or on CPU under Triton's interpreter."""
    if os.environ.get("HEARTH_GPU_KERNELS", "1") == "0":
        return False
    return (x.device.type == "cuda" or (x.device.type == "cpu" and _interpreted())) and _importable()


def rope_write(
    qk: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    blocks: torch.Tensor,
    offsets: torch.Tensor,
    norm: tuple[torch.Tensor, float] | None = None,
) -> None:
    """qk [T, Hq + Hkv, D] (rows contiguous) rotated in place by cos/sin [T, R] (the first R dims of
    each head, rotate-half), each head RMS-normalised first where `norm` (weights [Hq + Hkv, D],
    eps) is given; the rotated keys and v [T, Hkv, D] written to the layer's cache
    kc/vc [Hkv, blocks, BLOCK_SIZE, D] at (blocks[t], offsets[t])."""
    t, heads, d = qk.shape
    hkv, num_blocks, size, _ = kc.shape
    assert qk.stride(2) == 1 and qk.stride(1) == d and v.stride(2) == 1 and v.stride(1) == d
    assert cos.stride(-1) == 1 and sin.stride() == cos.stride() and kc.is_contiguous() and vc.is_contiguous()
    if t == 0:
        return
    _, kernel, _, _ = _triton()
    weight, eps = norm if norm is not None else (qk, 0.0)  # (an unread stand-in without a norm)
    assert norm is None or (weight.is_contiguous() and weight.shape == qk.shape[1:])
    kernel[(t, heads + hkv)](
        qk, qk.stride(0), v, v.stride(0), cos, sin, cos.stride(0), kc, vc, blocks, offsets, num_blocks,
        weight, eps, HQ=heads - hkv, HKV=hkv, D=d, BD=_pow2(d), R=cos.shape[-1], BS=size,
        NORM=norm is not None,
    )  # fmt: skip


def paged_decode(
    q: torch.Tensor,
    kc: torch.Tensor,
    vc: torch.Tensor,
    tables: torch.Tensor,
    lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    window: int | None,
) -> None:
    """out[r] = attention of q [R, Hq, D] (rows strided, heads contiguous) over each row's first
    lens[r] cached keys and values (the last `window` of them under a sliding window), found through
    tables [R, N] in kc/vc [Hkv, blocks, BLOCK_SIZE, D]; out [R, Hq, D] likewise."""
    rows, hq, d = q.shape
    hkv, num_blocks, size, _ = kc.shape
    assert q.stride(2) == 1 and q.stride(1) == d and out.stride(2) == 1 and out.stride(1) == d
    if rows == 0:
        return
    _, _, (kernel, reduce), _ = _triton()
    splits = -(-tables.shape[1] * size // SPLIT)  # fixed by the key length the rows are padded to
    bd = _pow2(d)
    part = q.new_empty(rows * hq * splits * (bd + 2) if splits > 1 else 1, dtype=torch.float32)
    kernel[(rows, hq, splits)](
        q, q.stride(0), kc, vc, tables, tables.stride(0), lens, out, out.stride(0), part, scale, window or 0,
        num_blocks, G=hq // hkv, D=d, BD=bd, BS=size, PAGES=PAGES, SPLIT=SPLIT, SPLITS=splits,
    )  # fmt: skip
    if splits > 1:
        reduce[(rows, hq)](part, out, out.stride(0), D=d, BD=bd, SPLITS=splits)


def act_mul(x: torch.Tensor, silu: bool) -> torch.Tensor:
    """x [M, 2N] (gate, then up) -> act(gate) * up [M, N]; act silu, else gelu (tanh approximation)."""
    m, n2 = x.shape
    n = n2 // 2
    out = x.new_empty(m, n)
    if m:
        _, _, _, kernel = _triton()
        block = 1024
        kernel[(m, -(-n // block))](x, x.stride(0), out, out.stride(0), n, SILU=silu, BN=block)
    return out


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()

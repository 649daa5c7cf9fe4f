"""engine/model/lean/quant.cpp: the AVX-512 VNNI int4 and int8 products build on every CPU that has
the instructions, compute what torch's kernels compute (within the error of quantizing the
activations to int8 per 32, as llama.cpp does), give a row the same bits alone as among 31 others,
and `Int4Linear.repack` moves torch's int4 layout to theirs without changing the product."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model.lean import fused
from engine.model.packed_linear import Int4Linear, Int8Linear


def _has_vnni() -> bool:
    return "avx512_vnni" in Path("/proc/cpuinfo").read_text()


def test_the_vnni_kernels_load_where_the_cpu_has_the_instructions() -> None:
    assert fused.vnni() == (_has_vnni() and fused.available())


needs_vnni = pytest.mark.skipif(not _has_vnni(), reason="this CPU has no AVX-512 VNNI")


def _x(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g).to(torch.bfloat16)


def _int4(n: int, k: int) -> tuple[Int4Linear, torch.Tensor]:
    """An `Int4Linear` in torch's layout and its weights [N, K] in float32."""
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    s = (torch.rand(k // 32, n, generator=g) * 0.02).bfloat16()
    z = (torch.randn(k // 32, n, generator=g) * 0.05).bfloat16()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    linear = Int4Linear(packed, torch.stack([s, z], dim=-1).contiguous(), 32, None)
    w = (q.float() - 8).reshape(n, k // 32, 32) * s.float().t()[..., None] + z.float().t()[..., None]
    return linear, w.reshape(n, k)


def _close(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max())


@needs_vnni
def test_int4_repack_keeps_the_product_and_rows_are_independent() -> None:
    linear, w = _int4(192, 1600)  # 1600: three whole spans of 512 and a narrower one
    x = _x(32, 1600)
    before = linear(x)
    assert linear.codes() is not None and linear.repack() and linear.vnni
    after = linear(x)
    ref = x.float() @ w.t()
    assert _close(after, ref) < 0.02 and _close(before, ref) < 0.02
    for i in (0, 17, 31):
        assert torch.equal(linear(x[i : i + 1].contiguous())[0], after[i])


@needs_vnni
def test_int8_rows_are_independent_and_near_torchs() -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (320, 640), generator=g, dtype=torch.int8)
    scale = (torch.rand(320, generator=g) * 0.01).bfloat16()
    linear = Int8Linear(q, scale, None)
    x = _x(32, 640)
    y = linear(x)
    ref = torch._weight_int8pack_mm(x, q, scale).float()
    assert _close(y, ref) < 0.02
    for i in (0, 9, 31):
        assert torch.equal(linear(x[i : i + 1].contiguous())[0], y[i])

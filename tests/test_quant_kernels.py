"""engine/model/lean/quant.cpp: the AVX-512 VNNI int8 product builds on every CPU that has the
instructions, computes what torch's kernel computes (within the error of quantizing the activations
to int8 per 32, as llama.cpp does), and gives a row the same bits alone as among 31 others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.model.lean import fused
from engine.model.packed_linear import Int8Linear


def _has_vnni() -> bool:
    return "avx512_vnni" in Path("/proc/cpuinfo").read_text()


def test_the_vnni_kernels_load_where_the_cpu_has_the_instructions() -> None:
    assert fused.vnni() == (_has_vnni() and fused.available())


needs_vnni = pytest.mark.skipif(not _has_vnni(), reason="this CPU has no AVX-512 VNNI")


def _x(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g).to(torch.bfloat16)


def _close(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max())


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

"""engine/model/lean/dense.cpp: the AVX512-BF16 product builds on every CPU that has the
instructions, computes `F.linear` (up to the order of its sums), rounds a residual add as
`residual + linear(x)` does, and gives a row the same bits alone as among 36 others, for shapes
that fill its tiles and shapes that do not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.model.lean import fused
from engine.model.lean.projections import Dot, plain_linear


def _has_bf16() -> bool:
    return "avx512_bf16" in Path("/proc/cpuinfo").read_text()


def test_the_kernel_loads_where_the_cpu_has_the_instructions() -> None:
    assert fused.bf16_dot() == (_has_bf16() and fused.available())


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has no AVX512-BF16")
@pytest.mark.parametrize(("n", "k"), [(960, 576), (37, 70)])  # whole tiles; ragged rows and K
def test_rows_are_independent_and_the_residual_rounds_as_transformers(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(n, k, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16()
    x = torch.randn(37, k, generator=g).bfloat16()
    residual = torch.randn(37, n, generator=g).bfloat16()
    proj = Dot([plain_linear(weight, bias)])
    y = proj(x)
    ref = F.linear(x.float(), weight.float(), bias.float())
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < 0.01
    assert torch.equal(proj.add(x, residual), (y.float() + residual.float()).bfloat16())
    for i in (0, 5, 36):
        assert torch.equal(proj(x[i : i + 1].contiguous())[0], y[i])

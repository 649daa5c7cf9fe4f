"""engine/model/lean/dense.cpp: the AVX512-BF16 and AVX-512F products build on every CPU that has the
instructions, compute `F.linear` (up to the order of their sums), add a residual as
`residual + linear(x)` does (bfloat16: rounded as it rounds), and give a row the same bits alone as
among 36 others, for shapes that fill their tiles and shapes that do not."""

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


def _has_avx512() -> bool:
    return "avx512f" in Path("/proc/cpuinfo").read_text()


def test_the_float32_kernel_loads_where_the_cpu_has_avx512() -> None:
    assert fused.f32_dot() == (_has_avx512() and fused.available())


@pytest.mark.parametrize(
    ("dtype", "pairs"), [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)]
)
@pytest.mark.parametrize(("n", "k"), [(960, 576), (37, 70), (20, 33)])  # whole tiles; ragged; odd K
def test_rows_are_independent_and_the_residual_adds_as_transformers(
    n: int, k: int, dtype: torch.dtype, pairs: bool
) -> None:
    """Both bfloat16 layouts (widened multiply-adds, `vdpbf16ps` pairs: fused.bf16_pairs picks one
    per CPU) and float32."""
    if not (fused.bf16_dot() if dtype == torch.bfloat16 else fused.f32_dot()):
        pytest.skip(f"this CPU has no {dtype} kernel")
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(n, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(37, k, generator=g).to(dtype)
    residual = torch.randn(37, n, generator=g).to(dtype)
    proj = Dot([plain_linear(weight, bias)], pairs=pairs)
    assert proj.weight.dim() == (4 if pairs else 3)
    assert torch.equal(proj.rows(torch.tensor([0, n - 1, n // 2])), weight[[0, n - 1, n // 2]])
    y = proj(x)
    ref = F.linear(x.float(), weight.float(), bias.float())
    tol = 0.01 if dtype == torch.bfloat16 else 1e-5
    assert float((y.float() - ref).abs().max() / ref.abs().max()) < tol
    assert torch.equal(proj.add(x, residual), (y.float() + residual.float()).to(dtype))
    for i in (0, 5, 36):
        assert torch.equal(proj(x[i : i + 1].contiguous())[0], y[i])

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
@pytest.mark.parametrize("group", [128, 32])
def test_int8_rows_are_independent_and_near_torchs(group: int) -> None:
    """Activations per 128 (layers) or per 32 (lm_heads); any row alone, in a 4 x 4 tile or left over
    beside others (37 rows: 9 tiles of 4 and one), gets the same bits; 324 weight rows end in a
    partial block of 8."""
    g = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (324, 576), generator=g, dtype=torch.int8)
    scale = (torch.rand(324, generator=g) * 0.01).bfloat16()
    linear = Int8Linear(q, scale, None, group)
    x = _x(37, 576)
    y = linear(x)
    ref = torch._weight_int8pack_mm(x, q, scale).float()
    assert _close(y, ref) < 0.02
    for i, n in ((0, 1), (9, 1), (36, 1), (5, 3), (30, 7)):
        assert torch.equal(linear(x[i : i + n].contiguous()), y[i : i + n])
    other = Int8Linear(q, scale, None, 160 - group)  # the other grouping: other bits, as close
    assert not torch.equal(other(x), y) and _close(other(x), ref) < 0.02


@needs_vnni
def test_int8_each_row_takes_its_own_expert_with_the_bits_of_the_product_alone() -> None:
    """`int8_linear_each` (a mixture of experts' token/expert pairs in one op): row r against expert
    ids[r] gives the bits of `int8_linear` on that row and expert alone, however the rows are spread
    over the experts (some get none, one gets six); an id out of range is an error naming it."""
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (5, 200, 128), generator=g, dtype=torch.int8)
    scale = (torch.rand(5, 200, generator=g) * 0.01).bfloat16()
    x = _x(11, 128)
    ids = torch.tensor([4, 0, 4, 4, 2, 4, 0, 4, 2, 4, 0])  # expert 1 and 3 get no row
    y = torch.ops.hearth.int8_linear_each(x, ids, q, scale)
    for r in range(11):
        alone = torch.ops.hearth.int8_linear(x[r : r + 1], q[ids[r]], scale[ids[r]])
        assert torch.equal(y[r : r + 1], alone)
    with pytest.raises(RuntimeError, match=r"ids\[3\] = 5 is not an expert"):
        torch.ops.hearth.int8_linear_each(x, torch.tensor([0, 1, 2, 5, 0, 0, 0, 0, 0, 0, 0]), q, scale)

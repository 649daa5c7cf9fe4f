"""engine.model.packed_linear's quantized linears: torchao's numbers through torch's kernels, one row
independent of the others (quantized models decode without padding rows), and concatenation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.model.packed_linear import QUANTIZED_LINEARS, Int4Linear, Int8Linear
from engine.model.quantize import quantize

CPU = torch.device("cpu")


def _quantized(setting: str, *shapes: tuple[int, int], bias: bool = False) -> tuple[nn.Module, nn.Module]:
    """(torchao's quantized layers, the same after Hearth's conversion): an nn.Sequential each."""
    torch.manual_seed(0)
    plain = nn.Sequential(*[nn.Linear(k, n, bias=bias) for n, k in shapes]).to(torch.bfloat16)
    reference = nn.Sequential(*[nn.Linear(k, n, bias=bias) for n, k in shapes]).to(torch.bfloat16)
    reference.load_state_dict(plain.state_dict())
    quantize(plain, setting, CPU)
    from torchao.quantization import quantize_

    from engine.model.quantize import _config

    quantize_(reference, _config(setting, CPU))
    return reference, plain


@pytest.mark.parametrize(("setting", "kind"), [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_layers_call_the_kernels_with_torchaos_numbers(setting: str, kind: type) -> None:
    reference, converted = _quantized(setting, (192, 576), (576, 1536), bias=True)
    assert all(type(m) is kind for m in converted)
    x = torch.randn(5, 576, dtype=torch.bfloat16)
    y = torch.randn(5, 1536, dtype=torch.bfloat16)
    # int4: the same kernel, so the same bits; int8: torchao multiplies by the dequantized weight
    check = torch.equal if setting == "int4" else _close
    assert check(converted[0](x), reference[0](x))
    assert check(converted[1](y), reference[1](y))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
    return True


@pytest.mark.parametrize("setting", ["int8", "int4"])
def test_a_row_has_the_same_bits_at_any_row_count(setting: str) -> None:
    _, converted = _quantized(setting, (960, 576))
    layer = converted[0]
    x = torch.randn(33, 576, dtype=torch.bfloat16)
    alone = layer(x[:1])
    for rows in (2, 3, 4, 5, 8, 17, 33):
        assert torch.equal(layer(x[:rows])[:1], alone), rows


@pytest.mark.parametrize("setting", ["int8", "int4"])
def test_concatenated_layers_give_each_layers_outputs(setting: str) -> None:
    _, converted = _quantized(setting, (576, 576), (192, 576), (192, 576), bias=True)
    layers = list(converted)
    kind = type(layers[0])
    assert issubclass(kind, QUANTIZED_LINEARS)
    fused = kind.concat(layers)  # type: ignore[attr-defined]
    x = torch.randn(3, 576, dtype=torch.bfloat16)
    assert torch.equal(fused(x), torch.cat([m(x) for m in layers], dim=-1))

"""oneDNN pre-packed linear layers for CPU inference.

`F.linear` through MKL re-packs the weight matrix on every call, which for the small row
counts of decoding costs as much as the product itself, and gives a row different bits
depending on how many rows share the call. oneDNN's pre-packed weights are reordered once
at load time; measured on this project's CPUs (AVX2 and AVX-512), the products are 1.5-2.5x
faster at 4-32 rows and a row's result is the same for every row count >= 2 (the engine
always runs a multiple of 4 rows), which keeps greedy output independent of the batch.

Only plain linears are packed; quantized ones (see `engine.quantize`) keep their own kernels.
`Int8Linear` is the int8 weight-only product on CPU (`aten._weight_int8pack_mm`), whose rows
are likewise independent of the row count.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("hearth.packed_linear")


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` whose weight is an ordinary tensor (not a quantized tensor subclass)."""
    return type(module) is nn.Linear and type(module.weight) is nn.Parameter


class PackedLinear(nn.Module):
    """A drop-in `nn.Linear` for inference whose weight lives in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear, batch_hint: int = 32) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")  # [M, N]
        return out.reshape(*x.shape[:-1], self.out_features)


class Int8Linear(nn.Module):
    """y = x @ (qdata * scale[:, None]).T + bias, with int8 weights [N, K] and one scale per row."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qdata.shape
        self.qdata: torch.Tensor
        self.scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("qdata", qdata.detach().contiguous())  # [N, K] int8
        self.register_buffer("scale", scale.detach().reshape(-1).contiguous())  # [N]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, K]
        out = torch._weight_int8pack_mm(rows, self.qdata, self.scale.to(x.dtype))  # [M, N]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, batch_hint: int = 32) -> int:
    """Replace every plain `nn.Linear` in `model` (lm_head included) by a `PackedLinear`; returns how many."""
    targets = [(name, mod) for name, mod in model.named_modules() if is_plain_linear(mod)]
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(mod, batch_hint))
    log.info("packed %d linear layers for oneDNN", len(targets))
    return len(targets)

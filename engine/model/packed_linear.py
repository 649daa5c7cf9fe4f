"""oneDNN pre-packed linear layers for CPU inference.

`F.linear` through MKL re-packs the weight matrix on every call, which for the small row
counts of decoding costs as much as the product itself, and gives a row different bits
depending on how many rows share the call. oneDNN's pre-packed weights are reordered once
at load time; measured on this project's CPUs (AVX2 and AVX-512), the products are 1.5-2.5x
faster at 4-32 rows and a row's result is the same for every row count >= 2 (the engine
always runs a multiple of 4 rows), which keeps greedy output independent of the batch.

Only plain linears are packed; quantized ones (see `engine.model.quantize`) keep their own kernels:
`Int8Linear` and `Int4Linear` are the weight-only products on CPU (`aten._weight_int8pack_mm`,
`aten._weight_int4pack_mm_for_cpu`), called directly. Their rows are independent of the row
count from one row up (measured), so quantized models decode without padding rows. Where the
lean forward's kernels are built for an AVX-512 VNNI CPU, `Int8Linear` runs Hearth's own product
instead (engine/model/lean/quant.cpp: the activations quantized to int8 per 32, as llama.cpp's Q8;
~1.6x torch's at one row, 1.6-2.5x at 8-32).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("hearth.packed_linear")


@functools.cache
def _vnni() -> bool:
    from engine.model.lean import fused  # late: the lean forward imports this module

    return fused.vnni()


def vnni_takes(x: torch.Tensor, in_features: int) -> bool:
    """Whether the VNNI products (engine/model/lean/quant.cpp) take activations like `x`."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16 and in_features % 64 == 0 and _vnni()


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


# Activations per int8 scale for the logits' product (an lm_head's `act_group`): groups of 128 moved
# SmolLM2's near-tied greedy tokens (engine/model/lean/quant.cpp); 32 keeps them.
LOGITS_GROUP = 32
LAYER_GROUP = 128


def act_group(name: str) -> int:
    """The `act_group` of the int8 linear at module path `name`: the lm_head's, or a layer's."""
    return LOGITS_GROUP if name == "lm_head" else LAYER_GROUP


class Int8Linear(nn.Module):
    """y = x @ (qdata * scale[:, None]).T + bias, with int8 weights [N, K] and one scale per row."""

    def __init__(
        self,
        qdata: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        act_group: int = LAYER_GROUP,
    ) -> None:
        """`act_group`: the activations per int8 scale in Hearth's VNNI kernel, 128 or 32 (lm_heads:
        see engine/model/lean/quant.cpp)."""
        super().__init__()
        self.act_group = act_group
        self.out_features, self.in_features = qdata.shape
        self.qdata: torch.Tensor
        self.scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("qdata", qdata.detach().contiguous())  # [N, K] int8
        self.register_buffer("scale", scale.detach().reshape(-1).contiguous())  # [N]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def fit(cls, weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> Int8Linear:
        """Per-row symmetric int8 of `weight` [N, K] (torchao's int8 weight-only fit: one scale per
        row, max |w| / 127), its scales in `dtype` (the activations')."""
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        qdata = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(qdata, scale.to(dtype), None)

    @classmethod
    def concat(cls, linears: list[Int8Linear]) -> Int8Linear:
        """One layer computing the outputs of `linears` (same input), concatenated."""
        scale = torch.cat([m.scale for m in linears])
        group = min(m.act_group for m in linears)
        return cls(torch.cat([m.qdata for m in linears]), scale, concat_bias(linears, scale), group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if vnni_takes(x, self.in_features):
            # an lm_head's logits stay float32: rounded to bfloat16 (one step is 0.125 at 25), the
            # top two of SmolLM2's "capital of France?" tied, and which won moved with the CPU
            rows, logits = as_rows(x, self.in_features), self.act_group == LOGITS_GROUP
            out = torch.ops.hearth.int8_linear(rows, self.qdata, self.scale, self.act_group, logits)
            return _finish(out, x, self.bias)
        scale = self.scale if self.scale.dtype == x.dtype else self.scale.to(x.dtype)
        out = torch._weight_int8pack_mm(as_rows(x, self.in_features), self.qdata, scale)  # [M, N]
        return _finish(out, x, self.bias)


class Int4Linear(nn.Module):
    """y = x @ W.T + bias, W [N, K] stored as int4 in groups of `group` weights along K, each group
    with a scale and a zero point, in the layout of torch's CPU int4 kernel
    (`aten._weight_int4pack_mm_for_cpu`): qdata [N, K / 2] uint8, scale_and_zero [K / group, N, 2].

    The layout keeps output rows apart, so layers of the same input concatenate along N.
    """

    def __init__(
        self, qdata: torch.Tensor, scale_and_zero: torch.Tensor, group: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.out_features = qdata.shape[0]
        self.in_features = qdata.shape[1] * 2
        self.group = group
        self.qdata: torch.Tensor
        self.scale_and_zero: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("qdata", qdata.detach().contiguous())
        self.register_buffer("scale_and_zero", scale_and_zero.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def concat(cls, linears: list[Int4Linear]) -> Int4Linear:
        """One layer computing the outputs of `linears` (same input and group size), concatenated."""
        assert len({m.group for m in linears}) == 1
        scales = torch.cat([m.scale_and_zero for m in linears], dim=1)
        qdata = torch.cat([m.qdata for m in linears])
        return cls(qdata, scales, linears[0].group, concat_bias(linears, scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = as_rows(x, self.in_features)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.qdata, self.group, self.scale_and_zero)
        return _finish(out, x, self.bias)


def as_rows(x: torch.Tensor, features: int) -> torch.Tensor:
    """x as contiguous rows [M, K]. A 2-D contiguous x (the lean forward's) is taken as it is, so a
    TorchScript trace of the forward records no shape ops for it: a trace's graph costs memory per
    node (the decode traces of SmolLM2 int4 measured ~45 MiB each, 11k nodes, a fifth of them here)."""
    if x.dim() != 2:
        x = x.reshape(-1, features)
    return x if x.is_contiguous() else x.contiguous()


def _finish(out: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The product's rows `out` [M, N] plus `bias`, in x's leading shape."""
    if bias is not None:
        out = out + bias
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], out.shape[-1])


QUANTIZED_LINEARS = (Int8Linear, Int4Linear)


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one scale each (a GGUF model's quantized table,
    shared with its tied `Int8Linear` lm_head), times `embed_scale` where the model scales it (Gemma)."""

    def __init__(
        self, qdata: torch.Tensor, scale: torch.Tensor, embed_scale: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qdata.shape
        self.qdata: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("qdata", qdata)  # [V, H] int8
        self.register_buffer("scale", scale.reshape(-1))  # [V]
        self.embed_scale = None if embed_scale is None else float(embed_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qdata[ids].float() * self.scale[ids].float().unsqueeze(-1)
        if self.embed_scale is not None:
            rows = rows.to(torch.bfloat16) * torch.tensor(self.embed_scale, dtype=torch.bfloat16)
        return rows.to(torch.bfloat16)


def concat_bias(linears: list[Any], like: torch.Tensor) -> torch.Tensor | None:
    """The concatenated biases of `linears` (zeros for those without), or None when none has one."""
    if all(m.bias is None for m in linears):
        return None
    zeros = [like.new_zeros(m.out_features) for m in linears]
    return torch.cat([z if m.bias is None else m.bias.detach() for m, z in zip(linears, zeros, strict=True)])


def pack_linears(model: nn.Module, batch_hint: int = 32) -> int:
    """Replace every plain `nn.Linear` in `model` (lm_head included) by a `PackedLinear`; returns how many."""
    targets = [(name, mod) for name, mod in model.named_modules() if is_plain_linear(mod)]
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(mod, batch_hint))
    log.info("packed %d linear layers for oneDNN", len(targets))
    return len(targets)

"""The products of the lean forward: one projection of one input, with the follow-up ops it needs.

`projection(linears)` computes the concatenated outputs of several linears of the same input
as one product: bfloat16 ones on CPUs with AVX512-BF16 and float32 ones on AVX-512 on Hearth's own
kernel (`Dot`); else on
CPU with oneDNN-packed weights (`_Packed`), whose residual add, product with
another tensor and activation ride on the product as post-ops; else as one `F.linear`
(`_Linear`), one quantized kernel (engine.model.packed_linear's `Int8Linear`, `Int4Linear`,
concatenated), or the linears as they are (torchao's, on CUDA). `split` cuts one linear into
several along its outputs (Phi-3's fused `gate_up_proj`), so each part gets its own post-ops.

Packed products are traceable (engine.model.cpu_traces) with two provisions: TorchScript's tracer
cannot record `_linear_pointwise`'s empty list of post-op scalars, so while tracing the call goes
through a scripted copy of it (`_packed`), which the trace keeps as a call; and a packed weight
cannot be a trace's constant, so the traces take the weights (`trace_weights`) as inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.lean import fused
from engine.model.packed_linear import (
    QUANTIZED_LINEARS,
    Int4Linear,
    Int8Linear,
    as_rows,
    concat_bias,
    is_plain_linear,
)

# activations of a gated MLP: transformers' name -> (oneDNN post-op, its algorithm)
ACTIVATIONS = {"silu": ("swish", ""), "gelu_pytorch_tanh": ("gelu", "tanh"), "gelu_new": ("gelu", "tanh")}


def _activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    return F.silu(x) if kind == "silu" else F.gelu(x, approximate="tanh")


class Proj:
    """A projection x [M, K] -> [M, N], with the follow-up ops the forward needs.

    This base class runs any linear module (a torchao int4 one, say) and does the follow-up
    ops separately; `_Packed` fuses them into oneDNN's product.
    """

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + proj(x)"""
        return residual + self(x)

    def mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """other * proj(x)"""
        return other * self(x)

    def act(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """activation(proj(x)), `kind` one of `ACTIVATIONS`"""
        return _activate(self(x), kind)


class _Concat(Proj):
    """Several projections of the same input whose outputs are concatenated (no fused kernel)."""

    def __init__(self, parts: list[Any]) -> None:
        super().__init__(None)
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


class Linear(Proj):
    """Plain linears of the same input as one `F.linear` (weights concatenated when several)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__(None)
        weights = [m.weight.detach() for m in linears]
        self.weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # one: no copy (tied lm_head)
        self.bias = concat_bias(linears, self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + proj(x); on a GPU one kernel: the product added into the residual, in place
        (the forward's residual stream is its own tensor)."""
        if x.is_cuda and self.bias is None and residual.dtype == x.dtype:
            return residual.addmm_(x, self.weight.t())
        return residual + self(x)


def _packed(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, post_op: str, algorithm: str
) -> torch.Tensor:
    """oneDNN's packed product with a unary post-op ("none", "swish", "gelu"): x [M, K] -> [M, N]."""
    scalars = torch.jit.annotate(list[Optional[Union[int, float, complex]]], [])  # noqa: UP007, UP045 (TorchScript)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, scalars, algorithm)


@functools.cache
def _scripted_packed() -> Callable[..., torch.Tensor]:
    return torch.jit.script(_packed)


class Packed(Proj):
    """A oneDNN-packed weight [N, K] (and bias), its follow-up ops fused as post-ops."""

    def __init__(self, linears: list[nn.Linear], batch_hint: int) -> None:
        super().__init__(None)
        weight = torch.cat([m.weight.detach() for m in linears])
        self.bias = concat_bias(linears, weight)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)

    def _unary(self, x: torch.Tensor, post_op: str, algorithm: str) -> torch.Tensor:
        product = _scripted_packed() if torch.jit.is_tracing() else _packed
        return product(x, self.weight, self.bias, post_op, algorithm)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._unary(x, "none", "")

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")

    def mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")

    def act(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self._unary(x, *ACTIVATIONS[kind])


class Dot(Proj):
    """Plain bfloat16 or float32 linears of the same input as one product on Hearth's own CPU kernel
    (engine/model/lean/dense.cpp, AVX-512F; bfloat16 where the CPU has AVX512-BF16 too): the weights
    packed once, 16 columns side by side (`pack_columns`, in their own dtype; bfloat16 ones in
    pairs for `vdpbf16ps` where that is faster, `pack_pairs`), each output one multiply-add chain
    in order, so a row's bits do not depend on how many rows share the call and
    steps need no padding rows. The residual add rides on the product."""

    def __init__(self, linears: list[nn.Linear], pairs: bool | None = None) -> None:
        super().__init__(None)
        weights = [m.weight.detach() for m in linears]
        weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        self.bias = concat_bias(linears, weight)
        self.n, self.k = weight.shape
        if weight.dtype == torch.bfloat16 and (fused.bf16_pairs() if pairs is None else pairs):
            self.weight = torch.ops.hearth.pack_pairs(weight)  # `vdpbf16ps` (see fused.bf16_pairs)
        else:
            self.weight = torch.ops.hearth.pack_columns(weight)

    def _product(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        rows = as_rows(x, x.shape[-1])
        return torch.ops.hearth.packed_linear(rows, self.weight, self.n, self.bias, residual)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, None)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if residual.dim() != 2 or residual.stride(1) != 1:
            return residual + self(x)
        return self._product(x, residual)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the weight as it was before packing ([len(ids), K]): a tied embedding's lookup."""
        blocks = torch.div(ids, 16, rounding_mode="floor")
        if self.weight.dim() == 4:  # pairs: [blocks, K / 2, 16, 2]
            return self.weight[blocks, :, ids % 16].flatten(-2)[..., : self.k]
        return self.weight[blocks, :, ids % 16]


class PackedEmbedding:
    """A tied embedding looked up in its lm_head's packed weight (`Dot.rows`), so the model holds one
    copy of it; times the module's `embed_scale` where it has one (Gemma's scaled embedding), as
    transformers multiplies it."""

    def __init__(self, module: Any, head: Dot) -> None:
        self.head = head
        scale = getattr(module, "embed_scale", None)
        self.scale = None if scale is None else scale.to(head.weight.dtype)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.head.rows(ids)
        return rows if self.scale is None else rows * self.scale


def _cpu_weights(linears: list[Any], dtype: torch.dtype) -> bool:
    return all(is_plain_linear(m) for m in linears) and all(
        m.weight.dtype == dtype and m.weight.device.type == "cpu" for m in linears
    )


def bf16_kernel(linears: list[Any]) -> bool:
    """Whether `linears` are plain bfloat16 CPU linears that Hearth's AVX512-BF16 kernel takes."""
    return _cpu_weights(linears, torch.bfloat16) and fused.bf16_dot()


def dot_kernel(linears: list[Any]) -> bool:
    """Whether `linears` are plain bfloat16 or float32 CPU linears that Hearth's own kernel takes."""
    return bf16_kernel(linears) or (_cpu_weights(linears, torch.float32) and fused.f32_dot())


def trace_weights(projections: list[Proj]) -> list[torch.Tensor]:
    """The tensors a trace of a forward over `projections` must take as inputs: packed weights."""
    return [p.weight for p in projections if isinstance(p, Packed)]


def projection(linears: list[Any], batch_hint: int, packing: bool) -> Proj:
    """One projection computing the concatenated outputs of `linears` (same input) as cheaply as we can."""
    if dot_kernel(linears):
        return Dot(linears)
    if all(is_plain_linear(m) for m in linears):
        return Packed(linears, batch_hint) if packing else Linear(linears)
    for kind in QUANTIZED_LINEARS:
        if all(type(m) is kind for m in linears):
            return Proj(linears[0] if len(linears) == 1 else kind.concat(linears))
    return Proj(linears[0]) if len(linears) == 1 else _Concat(linears)


def plain_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An `nn.Linear` over `weight` [N, K] (and `bias`) without copying them."""
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def split(linear: Any, parts: int) -> list[Any]:
    """`linear` cut into `parts` equal linears along its outputs (plain, `Int8Linear` or `Int4Linear`);
    a linear of another kind comes back as `_Slice`s of itself."""
    n = linear.out_features // parts
    cuts = [slice(i * n, (i + 1) * n) for i in range(parts)]
    bias = linear.bias.detach() if linear.bias is not None else None
    piece = lambda b, s: None if b is None else b[s].clone()  # noqa: E731
    if is_plain_linear(linear):
        return [plain_linear(linear.weight.detach()[s].clone(), piece(bias, s)) for s in cuts]
    if type(linear) is Int8Linear:
        return [Int8Linear(linear.qdata[s], linear.scale[s], piece(bias, s), linear.act_group) for s in cuts]
    if type(linear) is Int4Linear:
        return [
            Int4Linear(linear.qdata[s], linear.scale_and_zero[:, s], linear.group, piece(bias, s))
            for s in cuts
        ]
    return [_Slice(linear, s) for s in cuts]


class _Slice(nn.Module):
    """Some of the outputs of a linear module (runs the whole product)."""

    def __init__(self, linear: Any, cut: slice) -> None:
        super().__init__()
        self.linear, self.cut = linear, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)[..., self.cut]

"""A lean forward for Llama models: transformers' maths in a fraction of the calls.

At one stream on 2 cores, SmolLM2 spent ~12 of its ~40 ms per token outside the matrix
products, in transformers' module plumbing and ~1,500 small tensor ops. This forward runs the
same model with the same weights, rotary embedding (rope scaling included) and slot attention
(engine.attention), but:
- q/k/v and gate/up are one product each (weights concatenated once),
- on CPU the weights are packed for oneDNN, and the residual adds and the SiLU ride on the
  products as oneDNN post-ops,
- RMSNorm is one fused op, and rotary embedding is applied to q and k in one pass.
On CUDA the same forward, with plain `F.linear` products, is what engine.cuda_graphs captures:
every op in it is known to be capturable (no host sync, no data-dependent shape).

Every product keeps the property batch invariance rests on (a row's bits do not depend on
how many rows share the call, for 2 or more rows; the runner passes a multiple of 4, or any
count where all products are quantized kernels: see `row_multiple`).
Quantized weights on CPU (engine.packed_linear's `Int8Linear`, `Int4Linear`) are concatenated
the same way; other linears (torchao's, on CUDA) run as they are. Other architectures keep
transformers' forward (`supported`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import ROW_MULTIPLE, StepMeta, slot_attention
from engine.model.packed_linear import QUANTIZED_LINEARS, concat_bias, is_plain_linear, packing_available

ARCHITECTURES = frozenset({"LlamaForCausalLM"})


def supported(model: Any) -> bool:
    """True where this forward reproduces `model`: a Llama (plain, int8 or int4 weights) on the CPU
    or on one CUDA GPU (a model that accelerate spreads over several devices keeps transformers')."""
    cfg = model.config
    if type(model).__name__ not in ARCHITECTURES or getattr(cfg, "sliding_window", None):
        return False
    devices = {p.device for p in model.parameters()}
    return len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")


class _Proj:
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

    def swish(self, x: torch.Tensor) -> torch.Tensor:
        """silu(proj(x))"""
        return F.silu(self(x))


class _Concat(_Proj):
    """Several projections of the same input whose outputs are concatenated (no fused kernel)."""

    def __init__(self, parts: list[Any]) -> None:
        super().__init__(None)
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


class _Linear(_Proj):
    """Plain linears of the same input as one `F.linear` (weights concatenated when several)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__(None)
        weights = [m.weight.detach() for m in linears]
        self.weight = weights[0] if len(weights) == 1 else torch.cat(weights)  # one: no copy (tied lm_head)
        self.bias = concat_bias(linears, self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Packed(_Proj):
    """A oneDNN-packed weight [N, K] (and bias), its follow-up ops fused as post-ops."""

    def __init__(self, linears: list[nn.Linear], batch_hint: int) -> None:
        super().__init__(None)
        weight = torch.cat([m.weight.detach() for m in linears])
        self.bias = concat_bias(linears, weight)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")

    def mul(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.weight, self.bias, "mul")

    def swish(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "swish", [], "")


def _projection(linears: list[Any], batch_hint: int, packing: bool) -> _Proj:
    """One projection computing the concatenated outputs of `linears` (same input) as cheaply as we can."""
    if all(is_plain_linear(m) for m in linears):
        return _Packed(linears, batch_hint) if packing else _Linear(linears)
    for kind in QUANTIZED_LINEARS:
        if all(type(m) is kind for m in linears):
            return _Proj(linears[0] if len(linears) == 1 else kind.concat(linears))
    return _Proj(linears[0]) if len(linears) == 1 else _Concat(linears)


@dataclass(frozen=True)
class _Layer:
    index: int
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: _Proj
    o: _Proj
    gate: _Proj
    up: _Proj
    down: _Proj

    @property
    def projections(self) -> tuple[_Proj, ...]:
        return (self.qkv, self.o, self.gate, self.up, self.down)


class LeanLlama:
    """`forward(ids, pos, step, keep)`: logits [K, V] for the kept rows of one packed step.

    Built on the engine thread (on CPU, oneDNN packing is faster when done on the thread that runs
    the products). Takes the model's linear weights over: the model's own attention and MLP
    projections are dropped, so only this forward can run the model afterwards.
    """

    def __init__(self, model: Any, batch_hint: int = 32) -> None:
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.eps = cfg.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.norm = inner.norm.weight.detach()
        self.scaling = self.head_dim**-0.5
        param = next(model.parameters())
        packing = packing_available(param.device, param.dtype)

        def proj(*linears: Any) -> _Proj:
            return _projection(list(linears), batch_hint, packing)

        self.layers: list[_Layer] = []
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    index=i,
                    input_norm=layer.input_layernorm.weight.detach(),
                    post_norm=layer.post_attention_layernorm.weight.detach(),
                    qkv=proj(attn.q_proj, attn.k_proj, attn.v_proj),
                    o=proj(attn.o_proj),
                    gate=proj(mlp.gate_proj),
                    up=proj(mlp.up_proj),
                    down=proj(mlp.down_proj),
                )
            )
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(attn, name, None)
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(mlp, name, None)
        self.lm_head = proj(model.lm_head)
        model.lm_head = None
        self._attn_module = _LayerIndex()

    @property
    def _projections(self) -> list[_Proj]:
        return [p for layer in self.layers for p in layer.projections] + [self.lm_head]

    @property
    def plain(self) -> bool:
        """Every projection is a plain `F.linear` (no oneDNN packing, no quantized weights)."""
        return all(isinstance(p, _Linear) for p in self._projections)

    @property
    def traceable(self) -> bool:
        """No oneDNN-packed product: TorchScript cannot record those ops (engine.cuda_graphs traces
        this forward on a CPU for quantized models, whose kernels are plain aten ops)."""
        return not any(isinstance(p, _Packed) for p in self._projections)

    @property
    def row_multiple(self) -> int:
        """Rows a step must be padded to a multiple of for batch invariance: 1 where every product
        is a quantized kernel (rows independent from one row up), else `ROW_MULTIPLE`."""
        quantized = all(isinstance(p.module, QUANTIZED_LINEARS) for p in self._projections)
        return 1 if quantized else ROW_MULTIPLE

    @property
    def capturable(self) -> bool:
        """No op depends on data on the host: false for rotary embeddings that rescale with the
        longest position (transformers' "dynamic" and "longrope" read it back every call)."""
        rope = getattr(self.rotary, "rope_type", "default")
        kinds = rope.values() if isinstance(rope, dict) else [rope]
        return not any("dynamic" in kind or kind == "longrope" for kind in kinds)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.rms_norm(x, (self.hidden,), weight, self.eps)

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, step: StepMeta, keep: torch.Tensor
    ) -> torch.Tensor:
        """ids/pos [T] (the packed row), keep [K] rows whose logits to return -> [K, V]."""
        t = ids.shape[0]
        hq, hkv, d = self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)  # [T, H]
        cos, sin = self.rotary(x[None], pos[None])  # [1, T, D]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]
        for layer in self.layers:
            qkv = layer.qkv(self._rms(x, layer.input_norm))  # [T, (Hq + 2 Hkv) D]
            qk = _rotate(qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d), cos, sin)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            self._attn_module.layer_idx = layer.index
            out, _ = slot_attention(
                self._attn_module,  # type: ignore[arg-type]
                qk[:, :hq].transpose(0, 1)[None],
                qk[:, hq:].transpose(0, 1)[None],
                v.transpose(0, 1)[None],
                None,
                scaling=self.scaling,
                hearth_step=step,
            )
            x = layer.o.add(out.view(t, hq * d), x)
            h = self._rms(x, layer.post_norm)
            x = layer.down.add(layer.up.mul(h, layer.gate.swish(h)), x)
        return self.lm_head(self._rms(x[keep], self.norm))


class _LayerIndex:
    """What slot attention reads of the attention module: its layer index."""

    layer_idx = 0


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half convention, as transformers' Llama): x [T, H, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, rotated, sin)

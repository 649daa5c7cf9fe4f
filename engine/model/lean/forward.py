"""The lean forward, written once for every family in engine.model.lean.families.

Per layer: norm, one q/k/v product, optional per-head q/k norms, rotary embedding (of the layer's
type, possibly on part of each head), slot attention (its sliding window, scaling and soft-cap),
the output product, then a gated MLP (two products with the activation and the product fused) or
a mixture of experts (engine.model.lean.moe). Llama-shaped families add the residuals as post-ops
of the output and down products; Gemma's norms on those outputs come first ("sandwich" norms).
See engine.model.lean for what the forward guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.model.attention import ROW_MULTIPLE, StepMeta, cached_attention
from engine.model.lean import fused, gpu_kernels
from engine.model.lean.families import activation, family_of, layer_windows
from engine.model.lean.moe import MoE
from engine.model.lean.projections import (
    Dot,
    Linear,
    Packed,
    PackedEmbedding,
    Proj,
    dot_kernel,
    projection,
    split,
    trace_weights,
)
from engine.model.packed_linear import QUANTIZED_LINEARS, is_plain_linear, packing_available


class Norm:
    """RMSNorm over the last dim: Llama's (x̂ · w) or Gemma's (x̂ · (1 + w), in float32); one fused
    op on bfloat16 or float32 rows where the fused kernels are loaded (engine.model.lean.fused)."""

    def __init__(self, module: Any, eps: float, gemma: bool, fuse: bool = False) -> None:
        weight = module.weight.detach()
        self.gemma = gemma
        self.weight = 1.0 + weight.float() if gemma else weight.clone()  # its own (see runner._own_copies)
        self.shape = (weight.shape[-1],)
        self.eps = eps
        self.fuse = fuse

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse and x.dim() == 2 and x.dtype in (torch.bfloat16, torch.float32):
            return torch.ops.hearth.rms_norm(x, self.weight, self.eps)
        if self.gemma:
            return torch.rms_norm(x.float(), self.shape, self.weight, self.eps).to(x.dtype)
        return torch.rms_norm(x, self.shape, self.weight, self.eps)


@dataclass(frozen=True)
class Dense:
    """A gated MLP: down(act(gate(h)) * up(h)), plus the residual when given (fused on CPU)."""

    gate: Proj
    up: Proj
    down: Proj
    act: str

    def __call__(self, h: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        inner = self.up.mul(h, self.gate.act(h, self.act))
        return self.down(inner) if residual is None else self.down.add(inner, residual)

    @property
    def projections(self) -> tuple[Proj, ...]:
        return (self.gate, self.up, self.down)


@dataclass(frozen=True)
class FusedDense:
    """A gated MLP whose products have no post-ops to carry the activation and the product
    (quantized weights, Hearth's bfloat16 kernel, plain weights on a GPU): gate and up as one
    product, then one fused op (engine.model.lean.fused on CPU, gpu_kernels on a GPU)."""

    gate_up: Proj
    down: Proj
    act: str
    gpu: bool = False

    def __call__(self, h: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        act_mul = gpu_kernels.act_mul if self.gpu else torch.ops.hearth.act_mul
        inner = act_mul(self.gate_up(h), self.act == "silu")
        return self.down(inner) if residual is None else self.down.add(inner, residual)

    @property
    def projections(self) -> tuple[Proj, ...]:
        return (self.gate_up, self.down)


@dataclass(frozen=True)
class Layer:
    index: int
    input_norm: Norm
    mlp_norm: Norm
    attn_out_norm: Norm | None  # sandwich norms (Gemma)
    mlp_out_norm: Norm | None
    qkv: Proj
    o: Proj
    qk_norm: tuple[torch.Tensor, float] | None  # per-head weights [Hq + Hkv, D], eps
    rope: str | None  # the rotary embedding's layer type (Gemma 3), None when it has one
    window: int | None
    scaling: float
    softcap: float | None
    mlp: Dense | FusedDense | MoE


class LeanLlama:
    """`forward(ids, pos, step, keep)`: logits [K, V] for the kept rows of one packed step.

    Built on the engine thread (on CPU, oneDNN packing is faster when done on the thread that runs
    the products). Takes the model's linear weights over: the model's own attention and MLP
    projections are dropped, so only this forward can run the model afterwards.
    """

    def __init__(self, model: Any, batch_hint: int = 32) -> None:
        family, why = family_of(model)
        if family is None:
            raise ValueError(f"the lean forward cannot run {type(model).__name__}: {why}")
        self.family = family
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        eps = cfg.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.rope_types: list[str] = sorted(getattr(self.rotary, "layer_types", []))
        self.final_softcap: float | None = getattr(cfg, "final_logit_softcapping", None)
        act = activation(cfg) or "silu"
        param = next(model.parameters())
        packing = packing_available(param.device, param.dtype)
        # on a GPU: the rotary embedding, cache writes, decode attention and MLP activation as Triton
        # kernels (engine.model.lean.gpu_kernels); gate and up as one product
        self.gpu = gpu_kernels.usable(param) and gpu_kernels.self_check(
            param.device,
            param.dtype,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self._rotary_dims(param),
            _qk_norm_dtype(family, param.dtype),
        )
        # the fused CPU kernels take bfloat16 activations (plain bfloat16 weights, the quantized
        # kernels') and float32 ones (plain float32 weights)
        self.fused = fused.usable(param) and not self.gpu
        self.norm = Norm(inner.norm, eps, family.gemma_norm, self.fused)

        def proj(*linears: Any) -> Proj:
            return projection(list(linears), batch_hint, packing)

        def norm(module: Any) -> Norm:
            return Norm(module, eps, family.gemma_norm, self.fused)

        layer_types = getattr(cfg, "layer_types", None)
        windows = layer_windows(model)
        self.layers: list[Layer] = []
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            gpu_mlp = self.gpu and all(is_plain_linear(m) for m in _mlp_linears(mlp))
            if family.fused_qkv:
                qkv = proj(attn.qkv_proj)
                if gpu_mlp:
                    dense: Dense | FusedDense | MoE = FusedDense(
                        proj(mlp.gate_up_proj), proj(mlp.down_proj), act, gpu=True
                    )
                else:
                    gate, up = split(mlp.gate_up_proj, 2)
                    dense = Dense(proj(gate), proj(up), proj(mlp.down_proj), act)
            else:
                qkv = proj(attn.q_proj, attn.k_proj, attn.v_proj)
                if hasattr(mlp, "experts"):
                    dense = MoE(mlp, proj, act, quantized=isinstance(attn.q_proj, QUANTIZED_LINEARS))
                elif self.fused and _one_kernel(mlp.gate_proj, mlp.up_proj):
                    dense = FusedDense(proj(mlp.gate_proj, mlp.up_proj), proj(mlp.down_proj), act)
                elif gpu_mlp:
                    dense = FusedDense(proj(mlp.gate_proj, mlp.up_proj), proj(mlp.down_proj), act, gpu=True)
                else:
                    dense = Dense(proj(mlp.gate_proj), proj(mlp.up_proj), proj(mlp.down_proj), act)
            self.layers.append(
                Layer(
                    index=i,
                    input_norm=norm(layer.input_layernorm),
                    mlp_norm=norm(
                        layer.pre_feedforward_layernorm if family.sandwich else layer.post_attention_layernorm
                    ),
                    attn_out_norm=norm(layer.post_attention_layernorm) if family.sandwich else None,
                    mlp_out_norm=norm(layer.post_feedforward_layernorm) if family.sandwich else None,
                    qkv=qkv,
                    o=proj(attn.o_proj),
                    qk_norm=self._qk_norm(attn, eps) if family.qk_norm else None,
                    rope=layer_types[i] if self.rope_types and layer_types else None,
                    window=windows[i],
                    scaling=float(attn.scaling),
                    softcap=getattr(attn, "attn_logit_softcapping", None),
                    mlp=dense,
                )
            )
            for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj"):
                if hasattr(attn, name):
                    setattr(attn, name, None)
            for name in ("gate_proj", "up_proj", "gate_up_proj", "down_proj"):
                if hasattr(mlp, name):
                    setattr(mlp, name, None)
        self.lm_head = proj(model.lm_head)
        if isinstance(self.lm_head, Dot) and model.lm_head.weight is self.embed.weight:  # tied: one copy
            self.embed = PackedEmbedding(self.embed, self.lm_head)
            inner.embed_tokens = None
        model.lm_head = None

    def _rotary_dims(self, like: torch.Tensor) -> tuple[int, ...]:
        """The rotary embedding's width per head (below head_dim under a partial rotary factor), for
        each of its layer types."""
        x = torch.zeros(1, 1, 1, dtype=like.dtype, device=like.device)
        pos = torch.zeros(1, 1, dtype=torch.long, device=like.device)
        kinds: list[str | None] = [*self.rope_types] or [None]
        cos = [(self.rotary(x, pos) if kind is None else self.rotary(x, pos, kind))[0] for kind in kinds]
        return tuple(sorted({c.shape[-1] for c in cos}))

    def _qk_norm(self, attn: Any, eps: float) -> tuple[torch.Tensor, float]:
        """The q and k norms' weights, one row per head, scaled as the family's norm scales."""
        q, k = (m.weight.detach() for m in (attn.q_norm, attn.k_norm))
        if self.family.gemma_norm:
            q, k = 1.0 + q.float(), 1.0 + k.float()
        rows = [q.expand(self.heads, -1), k.expand(self.kv_heads, -1)]
        norm_eps = getattr(attn.q_norm, "variance_epsilon", getattr(attn.q_norm, "eps", eps))
        return torch.cat(rows).contiguous(), float(norm_eps)

    @property
    def _projections(self) -> list[Proj]:
        return [
            self.lm_head,
            *(p for layer in self.layers for p in (layer.qkv, layer.o, *layer.mlp.projections)),
        ]

    @property
    def plain(self) -> bool:
        """Every projection is a plain `F.linear` (no oneDNN packing, no quantized weights)."""
        return all(isinstance(p, Linear) for p in self._projections)

    @property
    def trace_weights(self) -> list[torch.Tensor]:
        """What a TorchScript trace of this forward (engine.model.cpu_traces) takes as inputs besides
        the step's: the oneDNN-packed weights, which cannot be a trace's constants."""
        return trace_weights(self._projections)

    @property
    def min_rows(self) -> int:
        """The fewest rows a product may run with and give each row the bits it gets in any multiple
        of 4 rows: 1 for the quantized kernels; 2 for oneDNN's packed products, which take another
        kernel for 1 row (measured on AVX-512: float32 rows of a K = 1536 product always differ,
        bfloat16 ones now and then; 2 rows matched 4 in every trial, in both)."""
        return 2 if any(isinstance(p, Packed) for p in self._projections) else 1

    @property
    def row_multiple(self) -> int:
        """Rows a step must be padded to a multiple of for batch invariance: 1 where every product
        is a quantized kernel or Hearth's bfloat16 one (rows independent from one row up), else
        `ROW_MULTIPLE`."""
        apart = all(isinstance(p, Dot) or isinstance(p.module, QUANTIZED_LINEARS) for p in self._projections)
        return 1 if apart else ROW_MULTIPLE

    @property
    def capturable(self) -> bool:
        """No op depends on data on the host: false for rotary embeddings that rescale with the
        longest position (transformers' "dynamic" and "longrope" read it back every call), and for
        mixtures of experts off the stacked int8 path (how many rows each expert gets is read back)."""
        rope = getattr(self.rotary, "rope_type", "default")
        kinds = rope.values() if isinstance(rope, dict) else [rope]
        moe_ok = all(layer.mlp.traceable for layer in self.layers if isinstance(layer.mlp, MoE))
        return moe_ok and not any("dynamic" in kind or kind == "longrope" for kind in kinds)

    def forward(
        self, ids: torch.Tensor, pos: torch.Tensor, step: StepMeta, keep: torch.Tensor
    ) -> torch.Tensor:
        """ids/pos [T] (the packed row), keep [K] rows whose logits to return -> [K, V]."""
        t = ids.shape[0]
        hq, hkv, d = self.heads, self.kv_heads, self.head_dim
        x = self.embed(ids)  # [T, H]
        ropes: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        kinds: list[str | None] = [*self.rope_types] or [None]
        for kind in kinds:
            cos, sin = (
                self.rotary(x[None], pos[None]) if kind is None else self.rotary(x[None], pos[None], kind)
            )
            ropes[kind] = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, R]
        for layer in self.layers:
            qkv = layer.qkv(layer.input_norm(x))  # [T, (Hq + 2 Hkv) D]
            qk = qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            at = step.over(layer.window)  # a sliding-window layer's own cache and blocks, if any
            kc, vc = at.cache.kv(layer.index)  # [Hkv, blocks, BLOCK_SIZE, D]
            cos, sin = ropes[layer.rope]
            if self.gpu:  # normed and rotated in place, the keys and values written: one kernel
                blocks, offsets = at.write_blocks, at.write_offsets
                gpu_kernels.rope_write(qk, v, cos[:, 0], sin[:, 0], kc, vc, blocks, offsets, layer.qk_norm)
            else:
                if layer.qk_norm is not None:
                    weight, eps = layer.qk_norm
                    qk = (torch.rms_norm(qk.to(weight.dtype), (d,), None, eps) * weight).to(qkv.dtype)
                if self.fused and qk.dtype in (torch.bfloat16, torch.float32):
                    qk = torch.ops.hearth.rope(qk.reshape(t, -1), hq + hkv, d, cos[:, 0], sin[:, 0])
                    qk = qk.view(t, hq + hkv, d)
                else:
                    qk = _rotate(qk, cos, sin)
                if self.fused:  # one op for both (lean/attend.cpp)
                    torch.ops.hearth.kv_write(kc, vc, qk[:, hq:], v, at.write_blocks, at.write_offsets)
                else:
                    kc[:, at.write_blocks, at.write_offsets] = qk[:, hq:].transpose(0, 1)
                    vc[:, at.write_blocks, at.write_offsets] = v.transpose(0, 1)
            in_place = gpu_kernels.paged_decode if self.gpu and layer.softcap is None else None
            out = cached_attention(
                qk[:, :hq], kc, vc, at, layer.scaling, layer.window, layer.softcap, in_place
            ).view(t, hq * d)
            if layer.attn_out_norm is None:
                x = layer.o.add(out, x)
            else:
                x = x + layer.attn_out_norm(layer.o(out))
            h = layer.mlp_norm(x)
            if isinstance(layer.mlp, MoE):
                x = x + layer.mlp(h)
            elif layer.mlp_out_norm is None:
                x = layer.mlp(h, x)
            else:
                x = x + layer.mlp_out_norm(layer.mlp(h))
        logits = self.lm_head(self.norm(x[keep]))
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits


def _qk_norm_dtype(family: Any, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype of the per-head q/k norms' weights (`LeanLlama._qk_norm`), None without them."""
    if not family.qk_norm:
        return None
    return torch.float32 if family.gemma_norm else dtype


def _mlp_linears(mlp: Any) -> list[Any]:
    """A dense gated MLP's gate and up linears (Phi-3's one `gate_up_proj`); none for experts."""
    if hasattr(mlp, "experts"):
        return [None]
    return [mlp.gate_up_proj] if hasattr(mlp, "gate_up_proj") else [mlp.gate_proj, mlp.up_proj]


def _one_kernel(gate: Any, up: Any) -> bool:
    """Whether a gated MLP's gate and up are quantized linears of one kind (and group), or bfloat16
    or float32 linears for Hearth's kernel, that concatenate into one product without post-ops."""
    if dot_kernel([gate, up]):
        return True
    return (
        type(gate) in QUANTIZED_LINEARS
        and type(gate) is type(up)
        and getattr(gate, "group", None) == getattr(up, "group", None)
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (rotate-half convention, as transformers'): x [T, H, D], cos/sin [T, 1, R];
    with R < D (a partial rotary factor, Phi-4-mini) the last D - R dims pass unrotated."""
    r = cos.shape[-1]
    part = x if r == x.shape[-1] else x[..., :r]
    half = r // 2
    rotated = torch.cat((-part[..., half:], part[..., :half]), dim=-1)
    out = torch.addcmul(part * cos, rotated, sin)
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)

"""A top-k mixture of experts (Qwen3-MoE's sparse block) as grouped products.

The router picks `top_k` experts per token (softmax in float32, top-k, optionally renormalised, as
transformers does). Token/expert pairs are then sorted by expert, and every expert that received
tokens runs its gated MLP once over its contiguous slice of rows: one Python iteration per expert
hit, never per token. Each slice is padded to a multiple of `ROW_MULTIPLE` rows, so a row's bits
do not depend on how many other tokens chose the same expert (batch invariance, as elsewhere in
the lean forward). A token's expert outputs are weighted and summed in ascending expert order,
the order of transformers' own `index_add_` loop.

The experts' weights are 3-D parameters, not linears, so `quantization: int8/int4` (which
quantizes linear layers) leaves them alone; when the model's linears are quantized, the experts are
fitted here to per-row int8 (`Int8Linear.fit`, torchao's int8 fit) and run on the int8 kernel, whose
rows are independent from one row up (no padding). Else they are oneDNN-packed like every other
product on CPU.

On Hearth's VNNI kernel (int8 experts, bfloat16 activations, sizes in multiples of 64) the experts
are stacked ([E, 2I, H] gate and up, [E, H, I] down) and every token/expert pair runs in one op per
product (`hearth::int8_linear_each`, which groups the pairs by expert in C++) with the activation
and product fused between them (`hearth::act_mul`): no expert row count goes back to Python, so
decode steps are traced like any other model's (`MoE.traceable`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from engine.model.attention import ROW_MULTIPLE, round_up
from engine.model.lean import fused
from engine.model.lean.projections import Proj, plain_linear
from engine.model.packed_linear import Int8Linear


class MoE:
    """`moe(h)`: the block's output [T, H] for normed hidden states h [T, H]."""

    def __init__(self, block: Any, proj: Callable[..., Proj], act: str, quantized: bool = False) -> None:
        """`quantized`: the model's linears are quantized; the experts become int8 (see above)."""
        router, experts = block.gate, block.experts
        self.top_k: int = router.top_k
        self.renormalize: bool = bool(router.norm_topk_prob)
        self.num_experts: int = router.num_experts
        self.act = act
        self.router = proj(plain_linear(router.weight.detach()))
        gate_up, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
        inner = gate_up.shape[1] // 2
        hidden = down.shape[1]
        # the stacked int8 experts of `int8_linear_each`: (gate_up qdata, scales, down qdata, scales)
        self.stacked: tuple[torch.Tensor, ...] | None = None
        self.gate: list[Proj] = []
        self.up: list[Proj] = []
        self.down: list[Proj] = []
        on_vnni = gate_up.device.type == "cpu" and gate_up.dtype == torch.bfloat16 and fused.vnni()
        if quantized and on_vnni and hidden % 64 == 0 and inner % 64 == 0:
            fits = [Int8Linear.fit(gate_up[e], gate_up.dtype) for e in range(self.num_experts)]
            downs = [Int8Linear.fit(down[e], down.dtype) for e in range(self.num_experts)]
            self.stacked = tuple(
                torch.stack([getattr(m, name) for m in linears])
                for linears in (fits, downs)
                for name in ("qdata", "scale")
            )
        else:
            expert = (lambda w: Int8Linear.fit(w, w.dtype)) if quantized else plain_linear
            self.gate = [proj(expert(gate_up[e, :inner])) for e in range(self.num_experts)]
            self.up = [proj(expert(gate_up[e, inner:])) for e in range(self.num_experts)]
            self.down = [proj(expert(down[e])) for e in range(self.num_experts)]
        self.row_multiple = 1 if quantized else ROW_MULTIPLE
        block.experts = block.gate = None  # the products above own the weights now

    @property
    def traceable(self) -> bool:
        """No op of the block reads data back on the host (the stacked experts' path)."""
        return self.stacked is not None

    @property
    def projections(self) -> tuple[Proj, ...]:
        return (self.router, *self.gate, *self.up, *self.down)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        t, hidden = h.shape
        k = self.top_k
        probs = torch.softmax(self.router(h), dim=-1, dtype=torch.float32)  # [T, E]
        weights, experts = torch.topk(probs, k, dim=-1)  # [T, k]
        if self.renormalize:
            weights /= weights.sum(dim=-1, keepdim=True)
        experts, order = experts.sort(dim=-1)  # each token's experts in ascending order
        weights = weights.gather(-1, order).to(h.dtype)

        flat = experts.reshape(-1)  # [T * k] pairs, by token
        if self.stacked is not None:
            gate_up, gate_up_scale, down, down_scale = self.stacked
            pairs = h.repeat_interleave(k, dim=0)  # [T * k, H]: each token once per expert it chose
            both = torch.ops.hearth.int8_linear_each(pairs, flat, gate_up, gate_up_scale)
            inner = torch.ops.hearth.act_mul(both, self.act == "silu")
            return self._combine(torch.ops.hearth.int8_linear_each(inner, flat, down, down_scale), weights)
        by_expert = flat.argsort(stable=True)  # pairs grouped by expert
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        tokens = by_expert // k
        out = h.new_empty(t * k, hidden)
        start = 0
        for e, count in enumerate(counts):
            if not count:
                continue
            pairs = by_expert[start : start + count]
            x = h.index_select(0, tokens[start : start + count])
            start += count
            pad = round_up(count, self.row_multiple) - count
            if pad:
                x = torch.cat([x, x.new_zeros(pad, hidden)])
            y = self.down[e](self.up[e].mul(x, self.gate[e].act(x, self.act)))
            out[pairs] = y[:count]
        return self._combine(out, weights)

    def _combine(self, out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The pairs' outputs [T * k, H] weighted [T, k] and summed per token in ascending expert order."""
        t, k = weights.shape
        weighted = out.view(t, k, -1) * weights[..., None]
        total = weighted[:, 0]
        for j in range(1, k):
            total = total + weighted[:, j]
        return total

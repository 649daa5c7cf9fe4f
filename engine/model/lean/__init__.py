"""A lean forward for decoder-only models: transformers' maths in a fraction of the calls.

At one stream on 2 cores, SmolLM2 spent ~12 of its ~40 ms per token outside the matrix
products, in transformers' module plumbing and ~1,500 small tensor ops. This forward runs the
same model with the same weights, rotary embedding (transformers' own module, so every rope
scaling it supports) and slot attention (engine.model.attention), but:
- q/k/v and gate/up are one product each (weights concatenated once),
- on CPU the weights are packed for oneDNN, and the residual adds, the activation and the
  gate * up product ride on the products as oneDNN post-ops,
- on CPU in bfloat16, RMSNorm, the rotary embedding of q and k, and a quantized gated MLP's
  activation and product are one op each (engine.model.lean.fused, C++ kernels built once).
On a CPU, engine.model.cpu_traces traces its decode steps (packed weights as the traces' inputs).
On CUDA the same forward, with plain `F.linear` products, is what engine.model.cuda_graphs captures:
every op in it is known to be capturable (no host sync, no data-dependent shape), except for
mixtures of experts, which run eagerly.

It is written once for the families in `families.FAMILIES` (Llama 3.x, Mistral, Qwen2/2.5, Qwen3,
Qwen3-MoE, Gemma 2/3, Phi-3/Phi-4-mini); other architectures keep transformers' forward
(`supported`, and `lean_path` says which path a model takes, for the log).

Every product keeps the property batch invariance rests on (a row's bits do not depend on
how many rows share the call, for 2 or more rows; the runner passes a multiple of 4, or any
count where all products are quantized kernels: see `row_multiple`).
Quantized weights on CPU (engine.model.packed_linear's `Int8Linear`, `Int4Linear`) are concatenated
the same way; other linears (torchao's, on CUDA) run as they are.
"""

from __future__ import annotations

from typing import Any

from engine.model.lean.families import FAMILIES, family_of, lean_path, path_for, path_for_folder
from engine.model.lean.forward import LeanLlama

ARCHITECTURES = frozenset(FAMILIES)
LeanModel = LeanLlama


def supported(model: Any) -> bool:
    """True where the lean forward reproduces `model`: one of its families (plain, int8 or int4
    weights) on the CPU or on one CUDA GPU (a model spread over several devices keeps transformers')."""
    return family_of(model)[0] is not None


__all__ = [
    "ARCHITECTURES",
    "FAMILIES",
    "LeanLlama",
    "LeanModel",
    "lean_path",
    "path_for",
    "path_for_folder",
    "supported",
]

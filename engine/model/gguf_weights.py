"""GGUF tensors served from their own quantized blocks, on torch's CPU kernels (`quantization: gguf`).

A GGUF file stores each weight matrix in blocks along its rows. Where a block type maps exactly
onto the layout of torch's CPU int4 kernel (`aten._weight_int4pack_mm_for_cpu`: 4-bit codes q in
groups of 32 along K, each group with a scale s and a zero z, w = (q - 8) * s + z), the codes are
repacked as they are, without refitting:

- Q4_0: d per 32, w = d * (q - 8)          -> s = d, z = 0
- Q4_1: d, m per 32, w = d * q + m          -> s = d, z = m + 8 d
- Q4_K: 8 sub-blocks of 32 per 256, 6-bit sc, m times d, dmin: w = d sc q - dmin m
                                            -> s = d sc, z = 8 s - dmin m

(s and z are rounded to bfloat16, the kernel's type: at most 2^-9 of a scale.) Other block
types (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, ...) have no exact int4 form; they are dequantized a slice
of rows at a time and refitted to per-row int8 (`aten._weight_int8pack_mm`), which measured
within noise of the file's own values in perplexity (see README, "GGUF models"). Float tensors
(norms) load as they are. A tied embedding keeps one int8 copy for its lookup and for lm_head.

Names and layout fixes (Llama's q/k row order, Gemma's norm offset) come from transformers' own
GGUF tables (`get_gguf_hf_weights_map`, `TENSOR_PROCESSORS`); a row reordering is applied to
the packed rows, so it needs no dequantized copy.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.model.packed_linear import LOGITS_GROUP, Int4Linear, Int8Embedding, Int8Linear, act_group

GROUP = 32  # weights per scale in the int4 layout
ROWS_PER_SLICE = 8192  # rows dequantized at a time for the int8 refit (bounds the peak memory)
_FLOAT_TYPES = ("F32", "F16", "BF16")

_log = logging.getLogger("hearth.gguf")


def int4_types() -> frozenset[str]:
    """Block types kept as int4 codes."""
    return frozenset({"Q4_0", "Q4_1", "Q4_K"})


def int4_codes(blocks: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q [N, K] uint8 in 0..15, scale [N, K/32] f32, zero [N, K/32] f32) of a Q4_0/Q4_1/Q4_K
    matrix given as raw bytes [N, row_bytes], such that w = (q - 8) * scale + zero exactly."""
    n = blocks.shape[0]
    if kind in ("Q4_0", "Q4_1"):
        size = 18 if kind == "Q4_0" else 20
        b = blocks.reshape(n, -1, size)  # [N, K/32, size]
        d = b[..., 0:2].copy().view(np.float16).astype(np.float32)[..., 0]
        m = b[..., 2:4].copy().view(np.float16).astype(np.float32)[..., 0] if kind == "Q4_1" else None
        qs = b[..., size - 16 :]  # [N, G, 16]: element j low nibble of byte j, j + 16 high nibble
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # [N, G, 32]
        zero = np.zeros_like(d) if m is None else m + 8 * d
        return q.reshape(n, -1), d, zero
    if kind == "Q4_K":
        from gguf.quants import Q4_K

        kb = blocks.reshape(-1, 144)  # [N * K/256, 144]
        d = kb[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = kb[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, mins = Q4_K.get_scale_min(kb[:, 4:16])  # [B, 8] each
        scale = d * sc.astype(np.float32)  # [B, 8]
        zero = 8 * scale - dmin * mins.astype(np.float32)
        qs = kb[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0x0F).reshape(n, -1)  # sub-block 2i: low nibbles of chunk i, 2i + 1: high
        return q, scale.reshape(n, -1), zero.reshape(n, -1)
    raise ValueError(f"{kind} has no int4 form")


def int4_linear(blocks: np.ndarray, kind: str, rows: np.ndarray | None = None) -> Int4Linear:
    """An `Int4Linear` over a Q4_0/Q4_1/Q4_K matrix's own codes, its rows taken in order `rows`."""
    q, scale, zero = int4_codes(blocks, kind)
    if rows is not None:
        q, scale, zero = q[rows], scale[rows], zero[rows]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q.astype(np.int32)), 1)
    scale_and_zero = torch.from_numpy(np.stack([scale, zero], axis=-1)).transpose(0, 1)  # [G, N, 2]
    return Int4Linear(packed, scale_and_zero.to(torch.bfloat16).contiguous(), GROUP, None)


def int8_rows(
    data: np.ndarray, kind: Any, rows: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(qdata [N, K] int8, scale [N] f32): the matrix dequantized a slice of rows at a time and
    refitted to one symmetric scale per row."""
    from gguf.quants import dequantize

    n = data.shape[0]
    order = np.arange(n) if rows is None else rows
    qdata = torch.empty(0, dtype=torch.int8)
    scales = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, ROWS_PER_SLICE):
        index = order[start : start + ROWS_PER_SLICE]
        w = torch.from_numpy(np.ascontiguousarray(dequantize(data[index], kind), dtype=np.float32))
        if start == 0:
            qdata = torch.empty(n, w.shape[1], dtype=torch.int8)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        qdata[start : start + len(index)] = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        scales[start : start + len(index)] = scale
    return qdata, scales


def read_blocks(
    gguf_path: Path, config: Any
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """Read `gguf_path`'s weights for `config`'s model in their own blocks.

    Returns (tensors, layout, kinds): tensors named `<module or parameter>:<part>`; layout says
    what each module or parameter becomes ("int4", "int8", "embed8" or "param"); kinds is the
    summary {block type: how it runs}, e.g. {"Q4_1": "int4", "Q8_0": "int8", "F32": "bfloat16"}.
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    reader = GGUFReader(gguf_path)
    architecture = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    model = _empty_model(config)
    names = _gguf_names(model, architecture, config.num_hidden_layers)
    modules = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, str] = {}
    summary: Counter[tuple[str, str]] = Counter()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        owner_name, _, attr = hf_name.rpartition(".")
        owner = modules[owner_name]
        if kind in _FLOAT_TYPES or tensor.data.ndim == 1 or attr != "weight":
            values = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name)
            tensors[f"{hf_name}:"] = torch.from_numpy(np.array(values.weights, dtype=np.float32)).bfloat16()
            layout[hf_name] = "param"
            summary[(kind, "bfloat16")] += 1
            continue
        rows = _row_order(processor, tensor.name, tensor.data.shape[0])
        if kind in int4_types() and not isinstance(owner, nn.Embedding):
            linear = int4_linear(tensor.data, kind, rows)
            tensors[f"{owner_name}:qdata"] = linear.qdata
            tensors[f"{owner_name}:scale_and_zero"] = linear.scale_and_zero
            layout[owner_name] = "int4"
            summary[(kind, "int4")] += 1
            continue
        tensors[f"{owner_name}:qdata"], scale = int8_rows(tensor.data, tensor.tensor_type, rows)
        embedding = isinstance(owner, nn.Embedding)
        tensors[f"{owner_name}:scale"] = scale if embedding else scale.bfloat16()
        layout[owner_name] = "embed8" if embedding else "int8"
        summary[(kind, "int8")] += 1
    _log.info(
        "GGUF %s: %s", gguf_path.name, ", ".join(f"{n} {k} as {h}" for (k, h), n in sorted(summary.items()))
    )
    return tensors, layout, {kind: how for kind, how in sorted(summary)}


def build_model(config: Any, tensors: dict[str, torch.Tensor], layout: dict[str, str]) -> Any:
    """`config`'s model (bfloat16, CPU, eval) over the tensors `read_blocks` returned.

    The module tree is built with empty (meta) parameters, so no full-precision copy is ever made;
    a tied lm_head shares the embedding's int8 rows.
    """
    model = _empty_model(config)
    modules = dict(model.named_modules())
    embedding: tuple[torch.Tensor, torch.Tensor] | None = None
    for name, how in layout.items():
        if how == "param":
            owner_name, _, attr = name.rpartition(".")
            modules[owner_name]._parameters[attr] = nn.Parameter(tensors[f"{name}:"], requires_grad=False)
        elif how == "int4":
            parts = tensors[f"{name}:qdata"], tensors[f"{name}:scale_and_zero"]
            _replace(model, name, Int4Linear(*parts, GROUP, None))
        elif how == "int8":
            parts = tensors[f"{name}:qdata"], tensors[f"{name}:scale"]
            _replace(model, name, Int8Linear(*parts, None, act_group(name)))
        else:
            embedding = tensors[f"{name}:qdata"], tensors[f"{name}:scale"]
            embed_scale = getattr(modules[name], "embed_scale", None)
            _replace(model, name, Int8Embedding(*embedding, embed_scale=embed_scale))
    head = getattr(model, "lm_head", None)
    if head is not None and _is_meta(head) and embedding is not None:  # tied: one int8 copy for both
        model.lm_head = Int8Linear(embedding[0], embedding[1].bfloat16(), None, LOGITS_GROUP)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"no weights in the GGUF file for {', '.join(left[:5])}")
    return model.eval()


def _empty_model(config: Any) -> Any:
    """`config`'s model with meta parameters (real buffers: rotary frequencies, embedding scales)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def _gguf_names(model: nn.Module, architecture: str, layers: int) -> dict[str, str]:
    """{GGUF tensor name: the model's parameter name}, from gguf-py's own table of names."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise ValueError(f"GGUF architecture {architecture!r} is unknown to gguf-py")
    table = get_tensor_name_map(arch, layers)
    names: dict[str, str] = {}
    for hf_name, _ in [*model.named_parameters(remove_duplicate=False)]:
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base)
        if gguf_name is not None:
            names.setdefault(f"{gguf_name}.{suffix}", hf_name)
    return names


def _row_order(processor: Any, name: str, n: int) -> np.ndarray | None:
    """The row permutation transformers' processor applies to tensor `name` (None: rows as they are)."""
    index = np.arange(n, dtype=np.int64)[:, None]
    moved = np.asarray(processor.process(weights=index, name=name).weights).reshape(-1)
    if moved.shape != (n,) or not np.array_equal(np.sort(moved), np.arange(n)):
        raise ValueError(f"GGUF tensor {name}: transformers changes more than its row order")
    return None if np.array_equal(moved, np.arange(n)) else moved


def _is_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)

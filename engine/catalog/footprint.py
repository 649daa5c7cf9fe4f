"""A model's memory before it is loaded, from its folder: the weight files scaled to the dtype it
will run in (and its quantization), plus its KV cache; so the registry can refuse a model that
would not fit `memory_budget_gb` without loading it. After a load the measured size is used."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.catalog.config import ModelConfig
from engine.catalog.memory import CPU_KV_TOKENS
from engine.catalog.models_file import resolve_source
from engine.core.blocks import BLOCK_SIZE

_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}
_QUANTIZED = {"int8": 0.55, "int4": 0.3}  # of the unquantized size (embeddings and norms stay)


def estimate_bytes(cfg: ModelConfig, cache_dir: Path) -> int | None:
    """Weights plus KV cache of `cfg` in bytes, or None when its folder does not tell (a GGUF file
    not converted yet, no config.json, no safetensors/bin files)."""
    try:
        folder = _weights_folder(cfg, cache_dir)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    if not files:
        return None
    text = config.get("text_config") or config
    stored = _BYTES.get(str(text.get("torch_dtype") or config.get("torch_dtype") or "float32"), 4)
    itemsize = _run_itemsize(cfg, stored)
    weights = sum(f.stat().st_size for f in files) * itemsize / stored * _QUANTIZED.get(cfg.quantization, 1.0)
    try:
        heads = int(text["num_attention_heads"])
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        per_token = 2 * int(text["num_hidden_layers"]) * kv_heads * head_dim
    except (KeyError, TypeError, ValueError):
        return int(weights)
    # at most: an unset budget is CPU_KV_TOKENS or max_batch_size sequences of max_context, at least one
    context = cfg.max_context or int(text.get("max_position_embeddings") or 4096)
    tokens = cfg.kv_cache_tokens or max(min(cfg.max_batch_size * context, CPU_KV_TOKENS), context)
    kv = per_token * (tokens + BLOCK_SIZE) * itemsize  # and the scratch block
    return int(weights + kv)


def _weights_folder(cfg: ModelConfig, cache_dir: Path) -> Path:
    from engine.model.loader import gguf_cache_dir  # the loader imports transformers' models

    source = resolve_source(cfg)
    return gguf_cache_dir(cfg, source, cache_dir) if cfg.gguf_file is not None else source


def _run_itemsize(cfg: ModelConfig, stored: int) -> int:
    """The bytes per weight it will run in (`auto` as the loader picks it)."""
    from engine.model.loader import pick_device, pick_dtype

    try:
        dtype = pick_dtype(cfg.dtype, pick_device(cfg.device), cfg.quantization)
    except ValueError:
        return stored
    return torch.empty((), dtype=dtype).element_size()

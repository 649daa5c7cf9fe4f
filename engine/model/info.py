"""A public description of a loaded model: what the server may show or hash without touching the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.catalog.config import ModelConfig


@dataclass(frozen=True)
class ModelInfo:
    """What one loaded model is and how it runs, read once when its engine is built.

    `dtype` and `device` are the ones in use (e.g. `bfloat16`, `cpu`), not the configured `auto`;
    `revision` is the checkpoint's commit hash when its config has one (a hub download), else None;
    `slots` is the number of sequences the engine runs at once at most (`max_batch_size`);
    `kv_cache_tokens` the KV cache's budget they share (engine.catalog.memory).
    """

    id: str
    source: str
    gguf_file: str | None
    architecture: str  # e.g. LlamaForCausalLM
    model_type: str  # e.g. llama
    revision: str | None
    dtype: str
    device: str
    quantization: str
    parameters: int
    vocab_size: int
    max_context: int
    slots: int
    kv_cache_tokens: int = 0


def describe(
    model: Any, config: ModelConfig, slots: int, quantization: str | None = None, kv_cache_tokens: int = 0
) -> ModelInfo:
    assert config.max_context is not None, "describe() takes the engine's resolved config"
    """`model` (a transformers model) under `config`, running `slots` sequences at most over a KV
    cache of `kv_cache_tokens`; `quantization`: what runs (e.g. `gguf:Q4_1,Q8_0>int8`), when it says
    more than the configured value."""
    model_config = model.config
    first = next(model.parameters())
    architectures = getattr(model_config, "architectures", None) or [type(model).__name__]
    commit = getattr(model_config, "_commit_hash", None)
    return ModelInfo(
        id=config.id,
        source=config.source,
        gguf_file=config.gguf_file,
        architecture=str(architectures[0]),
        model_type=str(getattr(model_config, "model_type", "")),
        revision=str(commit) if commit else None,
        dtype=str(first.dtype).removeprefix("torch."),
        device=str(first.device),
        quantization=quantization or config.quantization,
        parameters=count_parameters(model),
        vocab_size=int(model_config.get_text_config().vocab_size),
        max_context=config.max_context,
        slots=slots,
        kv_cache_tokens=kv_cache_tokens,
    )


def count_parameters(model: Any) -> int:
    """The model's weights, a tied one once; a packed or quantized linear or embedding (its weight held
    as buffers, not a parameter) counts as its `in_features` x `out_features` (or table size), a table
    shared by the embedding and the head once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if not any(name == "weight" for name, _ in module.named_parameters(recurse=False)):
            rows = getattr(module, "out_features", getattr(module, "num_embeddings", None))
            cols = getattr(module, "in_features", getattr(module, "embedding_dim", None))
            buffers = list(module.buffers(recurse=False))
            key = buffers[0].data_ptr() if buffers else id(module)
            if isinstance(rows, int) and isinstance(cols, int) and key not in seen:
                seen.add(key)
                total += rows * cols
        for param in module.parameters(recurse=False):
            if param.data_ptr() not in seen:
                seen.add(param.data_ptr())
                total += param.numel()
    return total

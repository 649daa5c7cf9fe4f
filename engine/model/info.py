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
    `slots` is the number of sequences the engine runs at once (`max_batch_size`, or fewer where the
    GPU has no room).
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


def describe(model: Any, config: ModelConfig, slots: int, quantization: str | None = None) -> ModelInfo:
    """`model` (a transformers model) under `config`, run with `slots` KV slots; `quantization`: what
    runs (e.g. `gguf:Q4_1,Q8_0>int8`), when it says more than the configured value."""
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
        parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=int(model_config.get_text_config().vocab_size),
        max_context=config.max_context,
        slots=slots,
    )

"""Frozen configuration records: one per catalog model, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """One entry of `models.yaml`.

    `source` is either `package:<python package>` (a folder shipped inside an installed
    package, located with `importlib.util.find_spec` without importing it) or a path to a
    local Hugging Face model directory. `gguf_file` names a GGUF file inside that folder;
    it is dequantized once and cached as safetensors.
    """

    id: str
    source: str
    aliases: tuple[str, ...] = ()
    gguf_file: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda
    max_context: int = 4096  # prompt + completion tokens per sequence
    max_batch_size: int = 32  # running sequences (KV slots)
    max_waiting: int = 256  # queued requests beyond the running ones
    prefill_chunk: int = 256  # prompt tokens processed per engine step
    chat_template: str | None = None  # overrides the tokenizer's template
    eos_token_ids: tuple[int, ...] = ()  # added to the tokenizer's eos id
    threads: int = 0  # torch intra-op threads on CPU; 0 = all cores
    owned_by: str = "hearth"

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"model {self.id!r}: dtype must be auto, float32, bfloat16 or float16")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"model {self.id!r}: device must be auto, cpu or cuda")
        for name in ("max_context", "max_batch_size", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"model {self.id!r}: {name} must be >= 1")
        if self.max_waiting < 0:
            raise ValueError(f"model {self.id!r}: max_waiting must be >= 0")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

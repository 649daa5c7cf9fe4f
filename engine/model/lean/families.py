"""Which architectures the lean forward runs, and what each family changes in it.

Most decoder-only models are Llama plus a few switches; a `Family` names them. Everything else the
forward needs it reads from the model itself (per layer: the sliding window, the attention's
`scaling` and soft-cap, the rotary embedding of the layer's type, biases, a MoE block or a dense
MLP), so a family's entry stays a handful of flags. `lean_path` says which forward a loaded model
takes, and why; `path_for` says the same from a config file's fields or a GGUF architecture name
(`hearth add`, before anything is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from engine.model.lean.projections import ACTIVATIONS


@dataclass(frozen=True)
class Family:
    name: str
    gemma_norm: bool = False  # RMSNorm scales by (1 + w), computed in float32
    sandwich: bool = False  # norms on the attention's and the MLP's outputs too, and before the MLP
    qk_norm: bool = False  # RMSNorm of every query and key head before the rotary embedding
    fused_qkv: bool = False  # one `qkv_proj` and one `gate_up_proj` (Phi-3)
    moe: bool = False  # layers may hold a top-k mixture of experts


def layer_windows(model: Any) -> list[int | None]:
    """Each decoder layer's sliding window (positions a query sees), None for a global layer."""
    cfg = model.config.get_text_config()
    default = getattr(cfg, "sliding_window", None)
    return [getattr(layer.self_attn, "sliding_window", default) for layer in model.model.layers]


FAMILIES = {
    "LlamaForCausalLM": Family("Llama"),
    "MistralForCausalLM": Family("Mistral"),
    "MinistralForCausalLM": Family("Ministral"),
    "Qwen2ForCausalLM": Family("Qwen2"),
    "Qwen3ForCausalLM": Family("Qwen3", qk_norm=True),
    "Qwen3MoeForCausalLM": Family("Qwen3-MoE", qk_norm=True, moe=True),
    "Gemma2ForCausalLM": Family("Gemma 2", gemma_norm=True, sandwich=True),
    "Gemma3ForCausalLM": Family("Gemma 3", gemma_norm=True, sandwich=True, qk_norm=True),
    "Phi3ForCausalLM": Family("Phi-3", fused_qkv=True),
}
# GGUF's `general.architecture` -> the transformers class its loader builds
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
LEAN = "lean forward"
TRANSFORMERS = "transformers' forward"


def activation(cfg: Any) -> str | None:
    return getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)


def config_problem(architecture: str, cfg: Any) -> str | None:
    """Why a model of `architecture` and config `cfg` cannot take the lean forward, or None."""
    if architecture not in FAMILIES:
        return f"{architecture} is not one of the lean forward's families"
    act = activation(cfg)
    if act is not None and act not in ACTIVATIONS:
        return f"its activation {act!r} is not one the lean forward fuses"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "it attends bidirectionally"
    return None


def family_of(model: Any) -> tuple[Family | None, str]:
    """The model's family where the lean forward applies, else None; and the reason, in words."""
    name = type(model).__name__
    problem = config_problem(name, model.config)
    if problem is None:
        devices = {p.device for p in model.parameters()}
        if len(devices) != 1 or next(iter(devices)).type not in ("cpu", "cuda"):
            problem = "its weights are not on one CPU or CUDA device"
    if problem is not None:
        return None, problem
    return FAMILIES[name], f"family {FAMILIES[name].name}"


def lean_path(model: Any) -> str:
    """One line for the log: the forward `model` takes, and why."""
    family, why = family_of(model)
    return f"{type(model).__name__}: {LEAN if family else TRANSFORMERS} ({why})"


def path_for(config: dict[str, Any] | None, gguf_architecture: str | None = None) -> str:
    """The forward a model will take, from its config.json fields or its GGUF architecture name."""
    if config is not None:
        architecture = (config.get("architectures") or ["?"])[0]
        problem = config_problem(architecture, SimpleNamespace(**config))
    elif gguf_architecture is not None:
        architecture = GGUF_ARCHITECTURES.get(gguf_architecture, f"GGUF architecture {gguf_architecture!r}")
        problem = config_problem(architecture, SimpleNamespace())
    else:
        return f"{TRANSFORMERS} (no config.json or GGUF to tell the architecture)"
    if problem is None:
        return f"{LEAN} (family {FAMILIES[architecture].name}, {architecture})"
    return f"{TRANSFORMERS} ({problem})"


def path_for_folder(folder: Path, gguf_file: str | None = None) -> str:
    """`path_for` a model folder: its config.json, else its GGUF file's `general.architecture`."""
    config = folder / "config.json"
    if gguf_file is None and config.is_file():
        return path_for(json.loads(config.read_text(encoding="utf-8")))
    gguf_path = folder / gguf_file if gguf_file else None
    if gguf_path is not None and gguf_path.is_file():
        from gguf import GGUFReader

        field = GGUFReader(gguf_path).get_field("general.architecture")
        if field is not None:
            return path_for(None, bytes(field.parts[field.data[0]]).decode("utf-8"))
    return path_for(None)

"""Small random-weight models of every family the lean forward runs, built from transformers'
config classes in-process (no download), and the helpers that compare them with transformers.

Each config keeps its family's real shape ratios (grouped kv heads, head_dim apart from
hidden / heads where the family allows it, norms, rope settings, sliding windows) at a tiny
size; windows are small (`WINDOW`) so the longer test prompt runs past them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from engine.catalog.config import ModelConfig
from engine.core.engine import Engine
from engine.model.loader import LoadedModel
from engine.model.quantize import quantize

VOCAB = 49152  # SmolLM2's tokenizer, which the engine detokenizes with
WINDOW = 16
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "initializer_range": 0.2,
    "tie_word_embeddings": True,
}


def _prompts() -> list[list[int]]:
    """A short prompt, one past the sliding window (and the prefill chunk) and one in between."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(100, 40000, (n,), generator=g).tolist() for n in (5, 3 * WINDOW - 8, WINDOW + 7)]


PROMPTS = _prompts()


def _llama3(base: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    return LlamaConfig(**base, rope_parameters=rope)


def _qwen2(base: dict[str, Any]) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**base)  # q/k/v biases


def _qwen3(base: dict[str, Any]) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(**{"head_dim": 32, **base})


def _qwen3_moe(base: dict[str, Any]) -> Any:
    from transformers import Qwen3MoeConfig

    experts = {
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": base["intermediate_size"] // 4,
    }
    return Qwen3MoeConfig(**{"head_dim": 32, **base}, norm_topk_prob=True, mlp_only_layers=[1], **experts)


def _mistral(base: dict[str, Any]) -> Any:
    from transformers import MistralConfig

    return MistralConfig(**base, sliding_window=WINDOW)


def _gemma3(base: dict[str, Any]) -> Any:
    from transformers import Gemma3TextConfig

    n = base["num_hidden_layers"]
    layer_types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n)]
    return Gemma3TextConfig(
        **{"head_dim": 32, **base},
        query_pre_attn_scalar=24,
        sliding_window=WINDOW,
        layer_types=layer_types,
        final_logit_softcapping=30.0,
    )


def _gemma2(base: dict[str, Any]) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(**{"head_dim": 32, **base}, query_pre_attn_scalar=24, sliding_window=WINDOW)


def _phi3(base: dict[str, Any]) -> Any:
    from transformers import Phi3Config

    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}
    return Phi3Config(**base, rope_parameters=rope, sliding_window=WINDOW, pad_token_id=0)


CONFIGS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "llama3": _llama3,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen3_moe": _qwen3_moe,
    "mistral": _mistral,
    "gemma3": _gemma3,
    "gemma2": _gemma2,
    "phi3": _phi3,
}


def llama(base: dict[str, Any]) -> Any:
    """The plain Llama config of `base`'s sizes (the baseline of scripts/bench_families.py)."""
    from transformers import LlamaConfig

    return LlamaConfig(**base)


def llama_rope(rope: dict[str, Any]) -> Any:
    """A tiny random Llama with rotary parameters `rope` (a rope scaling of transformers')."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**COMMON, rope_parameters={"rope_theta": 10000.0, **rope})).eval()


def build(name: str, seed: int = 0, base: dict[str, Any] | None = None) -> Any:
    """A random-weight model of family `name` (or "llama") in float32 of `base`'s sizes (default
    `COMMON`), norm weights and biases perturbed too."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = (llama if name == "llama" else CONFIGS[name])(base or COMMON)
    model: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@torch.inference_mode()
def reference(model: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """transformers' greedy tokens: `generate` without sampling, `n` new tokens (no early stop)."""
    outs = []
    for ids in prompts:
        seq = torch.tensor([ids])
        out = model.generate(
            seq, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outs.append(out[0, len(ids) :].tolist())
    return outs


@contextmanager
def engine_over(
    model: Any,
    tokenizer: Any,
    dtype: torch.dtype = torch.float32,
    quantization: str = "none",
    device: str = "cpu",
) -> Iterator[Engine]:
    """A started `Engine` over a copy of `model` on `device` (the lean forward takes its weights over)."""
    own = copy.deepcopy(model).to(device=device, dtype=dtype)
    if quantization != "none":
        quantize(own, quantization, torch.device(device))
    name = str(dtype).removeprefix("torch.")
    cfg = ModelConfig(
        id="family",
        source=".",
        dtype=name,
        device=device,
        max_context=256,
        max_batch_size=4,
        prefill_chunk=WINDOW,  # long prompts span chunks, and each chunk sees past the window
        quantization=quantization,
    )
    loaded = LoadedModel(own, tokenizer, torch.device(device), dtype, (2,), 0.0, Path("."))
    engine = Engine(loaded, cfg)
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown()

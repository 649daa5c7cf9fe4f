"""Random-weight Llama models built from a config, for GPU checks that cannot carry real weights.

A model folder is a transformers `LlamaForCausalLM` saved with `save_pretrained` plus the
SmolLM2 tokenizer files (tokenizer.json, tokenizer_config.json, chat_template.jinja), so
Hearth and `transformers serve` load it like any local model. The rows of the special tokens
(`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...) in the tied embedding are zeroed: their
logit is exactly 0 while the largest of ~49k random logits is positive, so greedy decoding
never stops early and every request runs to `max_tokens`, with or without `ignore_eos`.

The tokenizer comes from `find_tokenizer_dir()`: `$HEARTH_TOKENIZER_DIR`, else the repository's
`.gpu-assets/tokenizer/` (carried to GPU machines, see scripts/gpu_check.py), else Hearth's
converted SmolLM2 cache in `~/.cache/hearth` (or `$HEARTH_CACHE_DIR`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)
VOCAB = 49152  # SmolLM2's tokenizer


@dataclass(frozen=True)
class LlamaSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    init_std: float = 0.02  # weights ~ N(0, init_std); small models need more to not repeat one token


# Greedy output of TINY and SMALL varies from token to token (std 0.02 repeats one token forever).
TINY = LlamaSize(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, init_std=0.2)  # ~3 M params
SMALL = LlamaSize(hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536, init_std=0.1)  # ~50 M
ONE_B = LlamaSize(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192)  # ~1.07 B params


def find_tokenizer_dir() -> Path | None:
    """A folder holding the SmolLM2 `tokenizer.json`, or None when there is none on this machine."""
    candidates: list[Path] = []
    if os.environ.get("HEARTH_TOKENIZER_DIR"):
        candidates.append(Path(os.environ["HEARTH_TOKENIZER_DIR"]).expanduser())
    candidates.append(ROOT / ".gpu-assets" / "tokenizer")
    cache = Path(os.environ.get("HEARTH_CACHE_DIR") or "~/.cache/hearth").expanduser()
    converted = [d for d in cache.glob("*") if d.name.lower().startswith("smollm2-135m-instruct")]
    candidates += sorted(converted, key=lambda d: -d.stat().st_mtime)
    return next((d for d in candidates if (d / "tokenizer.json").is_file()), None)


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the tokenizer files that exist in `src` into `dst` (created if needed)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


# What every config here shares: SmolLM2's vocabulary and special ids, tied embeddings.
SMOLLM2_VOCAB: dict[str, Any] = {
    "vocab_size": VOCAB,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
    }


def llama_config(size: LlamaSize) -> Any:
    """The transformers `LlamaConfig` of `size`, with SmolLM2's vocabulary and special ids."""
    from transformers import LlamaConfig

    shape = _shape(size.hidden, size.intermediate, size.layers, size.heads, size.kv_heads)
    return LlamaConfig(**SMOLLM2_VOCAB, **shape, initializer_range=size.init_std, rms_norm_eps=1e-5)


def qwen3_1b_config() -> Any:
    """Qwen3-1.7B's shapes (28 layers, hidden 2,048, 16/8 heads of 128, qk-norm, tied embeddings)
    over SmolLM2's vocabulary: ~1.5 B parameters."""
    from transformers import Qwen3Config

    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    return Qwen3Config(**SMOLLM2_VOCAB, **_shape(2048, 6144, 28, 16, 8), head_dim=128, rope_parameters=rope)


def gemma3_1b_config() -> Any:
    """Gemma 3 1B's shapes (26 layers, hidden 1,152, 4/1 heads of 256, five sliding-window layers
    of 512 per global one) over SmolLM2's vocabulary: ~0.75 B parameters."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        **SMOLLM2_VOCAB,
        **_shape(1152, 6912, 26, 4, 1),
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        layer_types=["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(26)],
    )


def build_random_model(
    out: Path,
    tokenizer_dir: Path,
    config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """Save a random causal LM of transformers `config` with the tokenizer of `tokenizer_dir` into `out`.

    Weights are drawn on `device` after `torch.manual_seed(seed)`: the same seed gives the same
    weights on the same device type only, so build once and load the folder everywhere.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = AutoModelForCausalLM.from_config(config)
    model = model.to(dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    special = sorted({*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder})
    with torch.no_grad():
        model.get_input_embeddings().weight[special] = 0
    model.save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


def parameters(config: Any) -> int:
    """Parameters of a model of transformers `config` (built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def param_count(size: LlamaSize) -> int:
    """Parameters of a `size` model with tied embeddings (norm weights included)."""
    head_dim = size.hidden // size.heads
    attn = 2 * size.hidden * size.hidden + 2 * size.hidden * size.kv_heads * head_dim
    mlp = 3 * size.hidden * size.intermediate
    return VOCAB * size.hidden + size.layers * (attn + mlp + 2 * size.hidden) + size.hidden

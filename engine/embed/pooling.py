"""How an embedding model turns its last hidden states into one vector per input.

Read from a sentence-transformers folder: `modules.json` lists the modules (a `Pooling` module's
folder holds its `config.json`, a `Normalize` module says the vectors are L2-normalized) and
`sentence_bert_config.json` holds `max_seq_length` and `do_lower_case`. A catalog entry's
`pooling` / `normalize` override those; a folder without the files (e.g. a causal LM) must name its
`pooling` in the catalog, and is normalized unless the catalog says `normalize: false`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.catalog.config import ModelConfig

MODES = ("mean", "cls", "last")
_ST_MODES = {  # 1_Pooling/config.json's flags -> our names
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
}


class PoolingConfigError(ValueError):
    """The model folder's pooling cannot be served (a mode Hearth lacks, or none given)."""


@dataclass(frozen=True)
class Pooling:
    """One vector per input: `mode` over the real (unpadded) tokens, then L2 `normalize`d or not."""

    mode: str  # mean | cls | last
    normalize: bool
    max_seq_length: int | None = None  # sentence-transformers' limit on input tokens, if it has one
    lowercase: bool = False  # sentence-transformers' do_lower_case: inputs are lower-cased first

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, length, dim] hidden states and their [batch, length] 0/1 mask (right-padded) to
        [batch, dim] float32 vectors."""
        hidden = hidden.float()
        if self.mode == "cls":
            vectors = hidden[:, 0]
        elif self.mode == "last":
            last = mask.sum(dim=1).long() - 1
            vectors = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            vectors = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(vectors, p=2, dim=1) if self.normalize else vectors


def read_pooling(folder: Path, cfg: ModelConfig) -> Pooling:
    """The pooling of the model in `folder`, the catalog entry's fields taking precedence."""
    modules = _json(folder / "modules.json")
    types = [str(m.get("type", "")) for m in modules] if isinstance(modules, list) else []
    mode = cfg.pooling
    if mode is None:
        mode = _folder_mode(folder, modules)
    if mode is None:
        raise PoolingConfigError(
            f"model {cfg.id!r}: {folder} has no sentence-transformers pooling config "
            "(modules.json with a Pooling module); set pooling: mean, cls or last in the catalog"
        )
    normalize = cfg.normalize
    if normalize is None:
        normalize = any(t.endswith("Normalize") for t in types) if types else True
    bert = _json(folder / "sentence_bert_config.json")
    bert = bert if isinstance(bert, dict) else {}
    max_len = bert.get("max_seq_length")
    return Pooling(
        mode=mode,
        normalize=normalize,
        max_seq_length=int(max_len) if isinstance(max_len, int) and max_len > 0 else None,
        lowercase=bool(bert.get("do_lower_case", False)),
    )


def _folder_mode(folder: Path, modules: Any) -> str | None:
    """The mode named by the Pooling module's config.json (None when the folder has none)."""
    if not isinstance(modules, list):
        return None
    entry = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if entry is None:
        return None
    config = _json(folder / str(entry.get("path", "")) / "config.json")
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("pooling_mode"), str):  # newer sentence-transformers write one name
        name = {"lasttoken": "last", "mean_tokens": "mean", "cls_token": "cls"}.get(
            config["pooling_mode"], config["pooling_mode"]
        )
        flags = [name]
    else:
        flags = [mode for key, mode in _ST_MODES.items() if config.get(key)]
        others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _ST_MODES]
        flags += others
    if len(flags) != 1 or flags[0] not in MODES:
        raise PoolingConfigError(
            f"{folder}: pooling {flags} is not supported (one of {', '.join(MODES)}); "
            "set pooling in the catalog to override"
        )
    return flags[0]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

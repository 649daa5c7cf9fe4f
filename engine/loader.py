"""Loads a catalog model onto its device, converting a GGUF file once into a safetensors cache."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.catalog import resolve_source
from engine.config import ModelConfig

_log = logging.getLogger("hearth.loader")


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on `device`/`dtype`, its tokenizer, and the ids that end a sequence."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer, chat template already overridden from the catalog
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    load_seconds: float
    source_dir: Path  # the folder the weights were read from (the cache folder for GGUF models)


def load_model(cfg: ModelConfig, cache_dir: Path, *, attn_implementation: str | None = None) -> LoadedModel:
    """Load `cfg`'s model and tokenizer, offline.

    A GGUF model is dequantized on its first load and saved under
    `cache_dir/<id>-<hash of the GGUF's name, size and mtime>`; later loads read that folder.
    `attn_implementation` is passed to transformers (e.g. an attention registered by the engine).
    Raises `FileNotFoundError` for a missing source or GGUF file, `ValueError` for a device that
    is not available, and whatever transformers raises for a broken model.
    """
    start = time.perf_counter()
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    source = resolve_source(cfg)
    _log.info("loading %s from %s", cfg.id, source)
    if cfg.gguf_file is not None:
        source = _gguf_cache(cfg, source, cache_dir)

    model: Any = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
    )
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if cfg.chat_template is not None:
        tokenizer.chat_template = _read_template(cfg.chat_template)

    seconds = time.perf_counter() - start
    _log.info("loaded %s in %.1f s (%s, %s)", cfg.id, seconds, device, str(dtype).removeprefix("torch."))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        eos_token_ids=eos_ids(tokenizer, model.generation_config, cfg.eos_token_ids),
        load_seconds=seconds,
        source_dir=source,
    )


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; asking for cuda without one is a `ValueError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on cuda (float16 where bf16 is unsupported) and float32 on cpu."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


def eos_ids(tokenizer: Any, generation_config: Any, extra: tuple[int, ...]) -> tuple[int, ...]:
    """The tokenizer's eos id, the generation config's eos id(s) and `extra`, deduplicated in order."""
    ids: list[int] = []
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list | tuple):
            ids.extend(int(v) for v in value)
    ids.extend(extra)
    return tuple(dict.fromkeys(ids))


def _read_template(template: str) -> str:
    """A catalog `chat_template`: a path to a `.jinja` file, or the Jinja text itself."""
    if template.endswith(".jinja"):
        return Path(template).expanduser().read_text(encoding="utf-8")
    return template


def gguf_cache_dir(cfg: ModelConfig, source: Path, cache_dir: Path) -> Path:
    """Where `cfg`'s GGUF file is (or will be) cached as safetensors; keyed by its name, size and mtime."""
    assert cfg.gguf_file is not None
    gguf = source / cfg.gguf_file
    if not gguf.is_file():
        raise FileNotFoundError(f"model {cfg.id!r}: gguf_file {gguf} does not exist")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir / f"{cfg.id}-{key}"


def _gguf_cache(cfg: ModelConfig, source: Path, cache_dir: Path) -> Path:
    """The safetensors folder for `cfg`'s GGUF file, converting it first if needed."""
    assert cfg.gguf_file is not None
    final = gguf_cache_dir(cfg, source, cache_dir)
    if final.is_dir():
        return final

    _log.info("converting GGUF to safetensors cache at %s (one time)", final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert_gguf(source, cfg.gguf_file, tmp)
        try:
            os.rename(tmp, final)  # atomic: a crash never leaves a half-written cache folder
        except OSError:
            if not final.is_dir():  # another process may have won the race; anything else is real
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(source: Path, gguf_file: str, out: Path) -> None:
    """Dequantize `source/gguf_file` to float32 and save model + tokenizer to `out`.

    `save_pretrained` refuses a GGUF-loaded model (its config carries a quantization_config),
    so the weights are copied into a fresh model built from the config without it.
    """
    gguf_model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=gguf_file, dtype=torch.float32, local_files_only=True
    )
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, local_files_only=True)
    tokenizer.save_pretrained(out)

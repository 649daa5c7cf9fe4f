"""Loads a catalog model onto its device, converting a GGUF file once into a safetensors cache."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
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

from engine.catalog.config import ModelConfig
from engine.catalog.disk import cache_errors
from engine.catalog.models_file import PACKAGE_PREFIX, resolve_source
from engine.model.gguf_native import FORMAT as GGUF_FORMAT
from engine.model.gguf_native import load_native, one_parse, resolve_quantization
from engine.model.quantize import check as quantize_check
from engine.model.quantize import quantize
from engine.model.threads import one_thread

_log = logging.getLogger("hearth.loader")

PROBE_FILE = "hearth-conversion.json"  # written next to a converted GGUF: the greedy check's record
_PROBE_TEXT = "The capital of France is"
_PROBE_TOKENS = 8


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on `device`/`dtype`, its tokenizer, and the ids that end a sequence."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer, chat template already overridden from the catalog
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    load_seconds: float
    source_dir: Path  # the folder the weights (or, for `gguf`, the tokenizer) were read from
    quantization: str = "none"  # what runs: none | int8 | int4 | gguf:<block types> (gguf_native.describe)


def load_model(cfg: ModelConfig, cache_dir: Path, *, attn_implementation: str | None = None) -> LoadedModel:
    """Load `cfg`'s model and tokenizer, offline, with one torch thread (see `engine.model.threads`).

    A GGUF model is dequantized on its first load and saved under `cache_dir/<file>-<key>` (see
    `gguf_cache_dir`); later loads read that folder. With `device_map` set, accelerate places the
    weights (e.g. over several GPUs) and `device` is where the first of them lies.
    `attn_implementation` is passed to transformers (e.g. an attention registered by the engine).
    Raises `FileNotFoundError` for a missing source or GGUF file, `ValueError` for a device that
    is not available, and whatever transformers raises for a broken model.
    """
    with one_thread():
        return _load_model(cfg, cache_dir, attn_implementation)


def _load_model(cfg: ModelConfig, cache_dir: Path, attn_implementation: str | None) -> LoadedModel:
    start = time.perf_counter()
    device = pick_device(cfg.device)
    quantization = resolve_quantization(cfg.quantization, cfg.gguf_file, cfg.dtype, device.type)
    dtype = pick_dtype(cfg.dtype, device, quantization)
    quantize_check(quantization, device, dtype)  # refuse before reading any weight
    source = resolve_source(cfg)
    _log.info("loading %s from %s", cfg.id, source)
    if quantization == "gguf":
        return _load_gguf_native(cfg, source, cache_dir, attn_implementation, start)
    if cfg.gguf_file is not None:
        source = _gguf_cache(cfg, source, cache_dir)

    placement = {} if cfg.device_map is None else {"device_map": cfg.device_map}
    model: Any = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True, **placement
    )
    if cfg.device_map is None:
        model = model.to(device)
    else:
        device = next(model.parameters()).device
    model = model.eval()
    quantize(model, quantization, device)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return _loaded(cfg, model, tokenizer, device, dtype, start, source, quantization)


def _load_gguf_native(
    cfg: ModelConfig, source: Path, cache_dir: Path, attn_implementation: str | None, start: float
) -> LoadedModel:
    """A GGUF model on the CPU in its own blocks (engine.model.gguf_native); nothing dequantized is cached."""
    assert cfg.gguf_file is not None
    gguf_file = cfg.gguf_file

    def gguf() -> Path:
        if cfg.assemble:
            return assembled_gguf(cfg, cache_dir)
        return source / gguf_file

    if not cfg.assemble and not gguf().is_file():
        raise FileNotFoundError(f"model {cfg.id!r}: gguf_file {gguf()} does not exist")
    folder = gguf_cache_dir(cfg, source, cache_dir)
    meta = folder.with_name(f"{folder.name}-gguf{GGUF_FORMAT}")
    with cache_errors("the GGUF conversion cache", meta.parent):
        model, tokenizer, summary = load_native(gguf, meta, attn_implementation)
    return _loaded(cfg, model, tokenizer, torch.device("cpu"), torch.bfloat16, start, meta, summary)


def _loaded(
    cfg: ModelConfig,
    model: Any,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype,
    start: float,
    source: Path,
    quantization: str,
) -> LoadedModel:
    if cfg.chat_template is not None:
        tokenizer.chat_template = _read_template(cfg.chat_template)
    seconds = time.perf_counter() - start
    what = str(dtype).removeprefix("torch.") + ("" if quantization == "none" else f", {quantization}")
    _log.info("loaded %s in %.1f s (%s, %s)", cfg.id, seconds, device, what)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        eos_token_ids=eos_ids(tokenizer, model.generation_config, cfg.eos_token_ids),
        load_seconds=seconds,
        source_dir=source,
        quantization=quantization,
    )


def pick_device(name: str) -> torch.device:
    """`auto` is cuda when available, then mps, else cpu; asking for a missing one is a `ValueError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    if name == "mps" and not _mps_available():
        raise ValueError("device 'mps' requested but torch sees no Apple GPU")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and bool(backend.is_available())


def pick_dtype(name: str, device: torch.device, quantization: str = "none") -> torch.dtype:
    """`auto` is bfloat16 on cuda (float16 where bf16 is unsupported), bfloat16 on a CPU with
    native bf16 instructions (AVX512-BF16 or AMX; measured faster than float32 there) and for a
    quantized model (its kernels want bfloat16 activations), float32 on other CPUs."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and (quantization != "none" or cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype), name
    return dtype


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


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
    """Where `cfg`'s GGUF file is (or will be) cached as safetensors.

    Named after the GGUF file (catalog entries sharing a file share its conversion) and keyed by
    its size and mtime; for an assembled GGUF (`assemble`), by the version of the package that
    ships it, so the cache is found without assembling again.
    """
    assert cfg.gguf_file is not None
    if cfg.assemble:
        key_text = f"{cfg.gguf_file}:{_package_version(cfg)}"
    else:
        gguf = source / cfg.gguf_file
        if not gguf.is_file():
            raise FileNotFoundError(f"model {cfg.id!r}: gguf_file {gguf} does not exist")
        stat = gguf.stat()
        key_text = f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:12]
    return cache_dir / f"{Path(cfg.gguf_file).stem}-{key}"


def assembled_gguf(cfg: ModelConfig, cache_dir: Path) -> Path:
    """The GGUF file of an `assemble` model, joined into `cache_dir/gguf/` by its package once.

    The package is imported (unlike a plain `package:` source) and its `assemble(path)` writes
    the file and checks its hash; it writes to a temporary name renamed into place, so a crash
    or a concurrent process never leaves a half-written file under the final name.
    """
    assert cfg.gguf_file is not None
    package = cfg.source.removeprefix(PACKAGE_PREFIX)
    target = cache_dir / "gguf" / f"{package}-{_package_version(cfg)}" / cfg.gguf_file
    if target.is_file():
        return target
    assemble = getattr(importlib.import_module(package), "assemble", None)
    if not callable(assemble):
        raise FileNotFoundError(f"model {cfg.id!r}: package {package!r} has no assemble(path) function")
    _log.info("assembling %s into %s (one time)", cfg.gguf_file, target.parent)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with cache_errors("the GGUF assembly cache", target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            written = Path(assemble(tmp))
            os.replace(written, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _package_version(cfg: ModelConfig) -> str:
    """The installed version of the distribution shipping `cfg`'s source package."""
    package = cfg.source.removeprefix(PACKAGE_PREFIX).split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(package, []):
        return importlib.metadata.version(dist)
    raise FileNotFoundError(f"model {cfg.id!r}: source {cfg.source!r}: package {package!r} is not installed")


def _gguf_cache(cfg: ModelConfig, source: Path, cache_dir: Path) -> Path:
    """The safetensors folder for `cfg`'s GGUF file, converting it first if needed."""
    assert cfg.gguf_file is not None
    final = gguf_cache_dir(cfg, source, cache_dir)
    if final.is_dir():
        return final

    gguf_file = cfg.gguf_file
    if cfg.assemble:
        gguf = assembled_gguf(cfg, cache_dir)
        source, gguf_file = gguf.parent, gguf.name
    _log.info("converting GGUF to safetensors cache at %s (one time)", final)
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with cache_errors("the GGUF conversion cache", cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            _convert_gguf(source, gguf_file, tmp)
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
    so the weights are copied into a fresh model built from the config without it (tied
    embeddings stay tied: `from_config` ties them and `load_state_dict` fills the shared tensor).
    The GGUF model's greedy continuation of a short probe is recorded in `PROBE_FILE`, so the
    cache can be checked against the GGUF load without dequantizing it again.
    """
    with one_parse():  # the model's and the tokenizer's loads share one parse of the file
        gguf_model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, local_files_only=True)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    probe = tokenizer(_PROBE_TEXT)["input_ids"]
    continuation = greedy(gguf_model, probe, _PROBE_TOKENS)
    record = {"gguf_file": gguf_file, "prompt_ids": probe, "greedy_ids": continuation}
    (out / PROBE_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


@torch.inference_mode()
def greedy(model: Any, prompt_ids: list[int], n: int) -> list[int]:
    """`n` greedily decoded token ids after `prompt_ids` (plain forward passes, no cache)."""
    ids = list(prompt_ids)
    device = next(model.parameters()).device
    for _ in range(n):
        logits = model(torch.tensor([ids], device=device)).logits  # [1, S, V]
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def weights_folder(cfg: ModelConfig, cache_dir: Path) -> Path:
    """The folder `cfg`'s weights are read from: its source, or its GGUF file's safetensors cache
    (converted first when needed). Used by loaders of other model kinds (`engine.embed`)."""
    source = resolve_source(cfg)
    return source if cfg.gguf_file is None else _gguf_cache(cfg, source, cache_dir)

"""Loading a GGUF model in its own quantization (`quantization: gguf`, the default for a GGUF source
on a CPU): the weights come from the file's blocks (engine.model.gguf_weights).

The first load writes a cache folder beside the dequantizing path's: the config, generation config
and tokenizer (read from the file's metadata), and `WEIGHTS`, the repacked int4/int8 tensors, so
later loads read them as they are (memory-mapped) without parsing the GGUF file again: gguf-py's
reader parses every metadata field, the tokenizer's vocabulary included, which measured tens of
seconds for SmolLM2 on this project's 2 cores, where the cache reads in about a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

FORMAT = 1  # bump when what the cache folder holds changes
WEIGHTS = "hearth-gguf.safetensors"
RESOLVED = ("none", "int8", "int4", "gguf")

_log = logging.getLogger("hearth.loader")


def resolve_quantization(setting: str, gguf_file: str | None, dtype: str, device_type: str) -> str:
    """The quantization a model runs with: `auto` is `gguf` for a GGUF source on a CPU with
    `dtype: auto`, else `none` (the file dequantized to `dtype`: on a GPU, or when a dtype is set)."""
    if setting != "auto":
        return setting
    return "gguf" if gguf_file is not None and dtype == "auto" and device_type == "cpu" else "none"


def describe(kinds: dict[str, str]) -> str:
    """`gguf:Q4_1` when one block type holds every quantized matrix natively, else a per-type
    summary, e.g. `gguf:Q4_K,Q5_0>int8,Q6_K>int8,Q8_0>int8` (`>int8`: refitted to per-row int8)."""
    quantized = {k: how for k, how in kinds.items() if how != "bfloat16"}
    parts = [k if how == "int4" else f"{k}>{how}" for k, how in quantized.items()]
    return "gguf:" + ",".join(parts)


def load_native(
    gguf_file: Callable[[], Path], meta_dir: Path, attn_implementation: str | None
) -> tuple[Any, Any, str]:
    """(model in bfloat16 on the CPU, tokenizer, `describe` summary) for the GGUF file `gguf_file()`
    returns, called only when `meta_dir` is not complete (finding an assembled file takes seconds)."""
    from transformers import AutoConfig, GenerationConfig, PreTrainedTokenizerFast

    from engine.catalog.memory import release_memory
    from engine.model.gguf_weights import build_model

    complete = (meta_dir / WEIGHTS).is_file()
    gguf = meta_dir / "unused.gguf" if complete else gguf_file()
    with nullcontext() if complete else one_parse():  # a complete cache parses nothing
        _meta_cache(gguf, meta_dir)
        config = AutoConfig.from_pretrained(meta_dir, local_files_only=True)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation
        # The cached tokenizer.json (written by the model's own tokenizer class) read by transformers'
        # generic fast tokenizer: the same ids, texts and special tokens (checked on both catalog models),
        # where Gemma's own class held 264 MiB against 109 MiB for its 262k-token vocabulary. Read before
        # the weights, so its transient peak (Gemma: ~450 MiB above what it keeps) comes before them, and
        # trimmed after: its build leaves free memory in malloc's arenas (SmolLM2: ~30 MiB).
        tokenizer = PreTrainedTokenizerFast.from_pretrained(meta_dir, local_files_only=True)
        release_memory()
        tensors, layout, kinds = _weights(gguf, config, meta_dir / WEIGHTS)
    model = build_model(config, tensors, layout)
    model.generation_config = GenerationConfig.from_pretrained(meta_dir, local_files_only=True)
    return model, tokenizer, describe(kinds)


def _weights(gguf: Path, config: Any, path: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The repacked tensors, their layout and the block-type summary: read from `path` when it is
    there, else from the GGUF file and saved to `path` (written to a temporary name, then renamed)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from engine.model.gguf_weights import read_blocks

    if path.is_file():
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            tensors = {name: _aligned(f.get_tensor(name)) for name in f.keys()}  # noqa: SIM118 (not a dict)
        return tensors, json.loads(meta["layout"]), json.loads(meta["kinds"])
    tensors, layout, kinds = read_blocks(gguf, config)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        save_file(tensors, tmp, metadata={"layout": json.dumps(layout), "kinds": json.dumps(kinds)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return tensors, layout, kinds


def _aligned(tensor: Any) -> Any:
    """`tensor`, copied where safetensors left it off a 64-byte boundary: torch's int8 kernel crashed
    (SIGSEGV) on a misaligned weight at 512 rows (an lm_head read from this cache)."""
    return tensor if tensor.data_ptr() % 64 == 0 else tensor.clone()


@contextmanager
def one_parse() -> Iterator[None]:
    """One parse of a GGUF file for the config, the tokenizer and the weights: transformers' readers of
    the first two and ours of the third each make a `gguf.GGUFReader`, which parses every metadata
    field (Gemma 3's 262k-token vocabulary: ~10 s a parse on one core, 48 of a first load's 50 s).
    Inside this block they share one reader per file; gguf-py's reader is only read. One block at a
    time in a process (two models loading at once take turns), so that the module's own reader is
    always what is put back."""
    import gguf

    with _PARSE_LOCK:
        original = gguf.GGUFReader
        readers: dict[tuple[str, str], Any] = {}

        def shared(path: Any, mode: str = "r") -> Any:
            key = (str(Path(path).resolve()), mode)
            if key not in readers:
                readers[key] = original(path, mode)  # type: ignore[arg-type]
            return readers[key]

        gguf.GGUFReader = shared  # type: ignore[misc,assignment]
        try:
            yield
        finally:
            gguf.GGUFReader = original  # type: ignore[misc]


_PARSE_LOCK = threading.RLock()


def _meta_cache(gguf: Path, final: Path) -> None:
    """Write the config, generation config and tokenizer of `gguf` to `final` (once, atomically)."""
    if final.is_dir():
        return
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    _log.info("reading %s's config and tokenizer into %s (one time)", gguf.name, final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

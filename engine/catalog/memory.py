"""The KV cache's budget: how many tokens' keys and values it holds, or why it cannot.

The cache is `kv_cache_tokens` positions in blocks (engine.core.kv_cache), shared by every
running sequence. Unset, the budget is what `gpu_memory_utilization` (vLLM's name) of the GPU's
*free* memory, measured after the weights are loaded, holds; on a CPU it is
`CPU_KV_SHARE` of the available RAM, at most `CPU_KV_TOKENS` and `max_batch_size` sequences of
`max_context` tokens, and at least one (on a CPU its pages become resident as blocks are first
written, so the budget is what the process may grow to, not what it holds at start). A budget
smaller than one sequence of `max_context` tokens, or larger than the device holds, fails the load
with a message that names the field to change.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from engine.core.blocks import BLOCK_SIZE, blocks_for

if TYPE_CHECKING:
    from engine.catalog.config import ModelConfig
    from engine.core.engine import Engine
    from engine.embed.embedder import Embedder

log = logging.getLogger("hearth.engine")

GIB = 1024**3
CPU_KV_SHARE = 0.1  # of the RAM available at load time, for a CPU cache without kv_cache_tokens
CPU_KV_TOKENS = 16384  # at most, for a CPU cache without kv_cache_tokens


class KVBudgetError(RuntimeError):
    """The KV cache budget does not hold one full-length sequence, or does not fit the device."""


@dataclass(frozen=True)
class KVShape:
    """What one position of the cache holds: keys and values in every layer."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def token_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.head_dim * itemsize


def kv_shape(model: Any) -> KVShape:
    """The per-token shape of `model`'s cache (as `engine.model.runner.ModelRunner` allocates it)."""
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return KVShape(
        num_layers=cfg.num_hidden_layers,
        kv_heads=cfg.num_key_value_heads,
        head_dim=head_dim,
        dtype=next(model.parameters()).dtype,
    )


def fit_tokens(
    shape: KVShape, config: ModelConfig, device_bytes: int, on_gpu: bool, trained: int = 4096
) -> int:
    """The cache's budget in tokens (a whole number of blocks) for `config` on a device whose
    free memory (GPU: after the weights) or available RAM (CPU) is `device_bytes`; `trained` is
    the model's own context (the default of `max_context`)."""
    where = f"model {config.id!r}"
    context = config.max_context or trained
    seq_tokens = blocks_for(context) * BLOCK_SIZE
    if on_gpu:
        allowed = int(device_bytes * config.gpu_memory_utilization)
        share = config.gpu_memory_utilization
        what = f"gpu_memory_utilization {share:g} of the {device_bytes / GIB:.2f} GiB free"
    else:
        allowed = device_bytes
        what = f"the {device_bytes / GIB:.2f} GiB of RAM available"
    tokens = config.kv_cache_tokens
    if tokens is None:
        tokens = allowed // shape.token_bytes
        if not on_gpu:
            share = int(device_bytes * CPU_KV_SHARE) // shape.token_bytes
            tokens = max(min(share, config.max_batch_size * seq_tokens, CPU_KV_TOKENS), seq_tokens)
        field = "the KV cache budget (kv_cache_tokens unset)"
    else:
        field = f"kv_cache_tokens {tokens}"
        if tokens * shape.token_bytes > allowed:
            raise KVBudgetError(
                f"{where}: {field} needs {tokens * shape.token_bytes / GIB:.2f} GiB of KV cache, but "
                f"{what} allows {allowed / GIB:.2f} GiB; lower kv_cache_tokens"
            )
    tokens = tokens // BLOCK_SIZE * BLOCK_SIZE
    if tokens < seq_tokens and (config.max_context is not None or tokens < BLOCK_SIZE):
        raise KVBudgetError(
            f"{where}: {field} holds fewer tokens than one sequence of max_context "
            f"{context}; raise kv_cache_tokens (or gpu_memory_utilization) or lower max_context"
        )
    return tokens


def kv_tokens_for_device(shape: KVShape, config: ModelConfig, device: torch.device, trained: int) -> int:
    """`fit_tokens` against the device: the GPU's free memory on CUDA, else the RAM available."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return fit_tokens(shape, config, free, on_gpu=True, trained=trained)
    return fit_tokens(shape, config, available_ram(), on_gpu=False, trained=trained)


def kv_budget(model: Any, config: ModelConfig) -> tuple[int, ModelConfig]:
    """(The KV cache's budget in tokens, `config` with `max_context` resolved: the model's own
    window within the budget when unset) for a loaded model."""
    device = next(model.parameters()).device
    trained = trained_context(model)
    tokens = kv_tokens_for_device(kv_shape(model), config, device, trained)
    if config.max_context is None:
        config = replace(config, max_context=min(trained, tokens))
    return tokens, config


def trained_context(model: Any) -> int:
    """The model's own context window (`max_position_embeddings`; 4096 when it says none)."""
    n = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else 4096


def available_ram() -> int:
    """Bytes of RAM available to new allocations: Linux's MemAvailable, else the free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def engine_bytes(engine: Engine | Embedder) -> int:
    """Memory a loaded model holds: `weight_bytes` plus its whole KV cache (allocated at load)."""
    return weight_bytes(engine) + kv_bytes(engine)


def weight_bytes(engine: Engine | Embedder) -> int:
    """The bytes of every tensor the model's forward reads: parameters and buffers, tensors held
    as plain attributes, the weights the lean forward took over (concatenated, oneDNN-packed or
    quantized: the model's own projections are gone then), each storage counted once."""
    runner = getattr(engine, "runner", None)  # an embedding model has none
    return tensor_bytes([engine.model, getattr(runner, "lean", None)])


def kv_bytes(engine: Engine | Embedder) -> int:
    """The bytes of the model's KV cache (an embedding model has none)."""
    runner = getattr(engine, "runner", None)
    if runner is None:
        return 0
    caches = [c for c in (runner.cache, runner.window_cache) if c is not None]  # sliding-window layers apart
    return sum(int(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size()) for c in caches)


def tensor_bytes(roots: list[Any]) -> int:
    """The bytes of the distinct tensor storages reachable from `roots`: modules (their parameters,
    buffers and tensor attributes, recursively), lists, tuples, dicts, and the attributes of
    Hearth's own objects (`engine.*` classes); tensor subclasses (torchao) by their inner tensors."""
    storages: dict[int, int] = {}
    visited: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if obj is None or isinstance(obj, str | int | float | bool) or id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            _count_tensor(obj, storages, stack)
        elif isinstance(obj, torch.nn.Module):
            stack.extend(v for v in vars(obj).values() if isinstance(v, torch.Tensor))
            stack.extend(obj._parameters.values())
            stack.extend(obj._buffers.values())
            stack.extend(obj._modules.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif type(obj).__module__.startswith("engine.") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return sum(storages.values())


def _count_tensor(t: torch.Tensor, storages: dict[int, int], stack: list[Any]) -> None:
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        stack.extend(getattr(t, name) for name in names)
        return
    try:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    except (RuntimeError, NotImplementedError, TypeError):  # oneDNN-packed (mkldnn) tensors: no storage
        storages[id(t)] = t.numel() * t.element_size()


def release_memory() -> None:
    """Hand freed model memory back: collect cycles, empty the CUDA cache, and on glibc trim the
    heap (measured: without it ~300-450 MiB of an unloaded 0.3 GB model stayed in the process).

    Called when a model unloads (engine.catalog.registry) and after quantization replaced its
    full-precision weights (engine.model.quantize)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass

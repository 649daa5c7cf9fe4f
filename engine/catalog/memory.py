"""The KV cache's share of GPU memory: how many slots fit, or why none does.

On CUDA the slot cache is allocated up front ([layers, slots, kv heads, max_len, head dim] for
keys and for values), so it must fit beside the weights. `gpu_memory_utilization` (vLLM's
name) is the fraction of the GPU's *free* memory, measured after the weights are loaded, that
the cache may take. When fewer slots than `max_batch_size` fit, the engine runs with fewer
(and says so); when not even one sequence of `max_context` tokens fits, loading fails with a
message that says what to change. On the CPU the cache's pages are only touched as they fill,
so no budget is applied there.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.model.attention import KV_BLOCK, round_up

if TYPE_CHECKING:
    from engine.core.engine import Engine
    from engine.embed.embedder import Embedder

log = logging.getLogger("hearth.engine")

GIB = 1024**3


class KVBudgetError(RuntimeError):
    """Not even one sequence's KV cache fits in the allowed share of GPU memory."""


@dataclass(frozen=True)
class KVShape:
    """What one slot of the cache holds: keys and values of `max_len` positions in every layer."""

    num_layers: int
    kv_heads: int
    max_len: int
    head_dim: int
    dtype: torch.dtype

    @property
    def slot_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.max_len * self.head_dim * itemsize


def kv_shape(model: Any, max_context: int) -> KVShape:
    """The slot shape of `model`'s cache (as `engine.model.runner.ModelRunner` allocates it)."""
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return KVShape(
        num_layers=cfg.num_hidden_layers,
        kv_heads=cfg.num_key_value_heads,
        max_len=round_up(max_context, KV_BLOCK),
        head_dim=head_dim,
        dtype=next(model.parameters()).dtype,
    )


def fit_slots(shape: KVShape, wanted: int, free_bytes: int, utilization: float, model_id: str) -> int:
    """How many sequence slots (at most `wanted`) fit in `utilization` of `free_bytes`.

    One more slot than that is allocated: the scratch slot that padding tokens write to.
    """
    budget = int(free_bytes * utilization)
    fitting = budget // shape.slot_bytes - 1  # minus the scratch slot
    if fitting < 1:
        need = 2 * shape.slot_bytes / GIB
        raise KVBudgetError(
            f"model {model_id!r}: the KV cache for one sequence of {shape.max_len} tokens (plus the "
            f"scratch slot) needs {need:.2f} GiB, but gpu_memory_utilization {utilization:g} of the "
            f"{free_bytes / GIB:.2f} GiB free after loading the weights allows {budget / GIB:.2f} GiB. "
            "Lower max_context, raise gpu_memory_utilization (at most 1.0), pick a smaller dtype, "
            "or free the GPU of other processes."
        )
    if fitting < wanted:
        log.warning(
            "model %s: the KV cache fits %d of the %d sequence slots asked for (max_batch_size) in "
            "%.2f GiB (gpu_memory_utilization %g); running with %d",
            model_id,
            fitting,
            wanted,
            budget / GIB,
            utilization,
            fitting,
        )
    return min(fitting, wanted)


def slots_for_device(
    shape: KVShape, wanted: int, device: torch.device, utilization: float, model_id: str
) -> int:
    """`fit_slots` against the device's free memory on CUDA; `wanted` elsewhere."""
    if device.type != "cuda":
        return wanted
    free, _total = torch.cuda.mem_get_info(device)
    return fit_slots(shape, wanted, free, utilization, model_id)


def engine_bytes(engine: Engine | Embedder) -> int:
    """Memory a loaded model holds at most: `weight_bytes` plus its whole KV cache (on a CPU the
    cache's pages are touched only as sequences grow, so the process's RSS starts lower)."""
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
    cache = runner.cache
    return int(cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size())


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

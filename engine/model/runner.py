"""The only place that touches the model, the device and the KV cache.

`ModelRunner.run(plan)` packs one step's tokens into a single row, runs the model with the
paged attention (engine.model.attention), and returns the logits of the last token of every sequence
that is due a new token. The model runs through the lean forward (engine.model.lean) where it
supports the model, else through transformers' own (the log says which); decode-only steps replay
recorded graphs of the lean forward (engine.model.decode_graphs): CUDA graphs on a GPU, TorchScript
traces on a CPU.
"""

from __future__ import annotations

import logging
from operator import attrgetter
from typing import Any

import torch
from transformers import AttentionInterface

from engine.catalog.memory import release_memory
from engine.core.blocks import BLOCK_SIZE, blocks_for
from engine.core.kv_cache import PagedKVCache
from engine.core.sequence import Sequence
from engine.core.window import window_pool_blocks
from engine.model.attention import (
    ROW_MULTIPLE,
    DecodeGroup,
    PrefillChunk,
    StepMeta,
    decode_groups,
    kv_length,
    round_up,
    slot_attention,
)
from engine.model.cpu_traces import CpuTraces
from engine.model.cuda_graphs import CudaGraphs
from engine.model.decode_graphs import DecodeGraphs
from engine.model.lean import LeanLlama, lean_path
from engine.model.lean import supported as lean_supported
from engine.model.lean.families import layer_windows
from engine.model.packed_linear import pack_linears, packing_available
from engine.model.threads import one_thread

ATTENTION_NAME = "hearth_slots"
log = logging.getLogger("hearth.engine")


def use_slot_attention(model: Any) -> None:
    """Register the slot attention with transformers and switch `model` to it."""
    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    model.set_attn_implementation(ATTENTION_NAME)


class ModelRunner:
    def __init__(
        self,
        model: Any,
        max_batch: int,
        max_context: int,
        num_blocks: int | None = None,
        lean: bool = True,
        graphs: bool = True,
        step_tokens: int = 1024,
    ) -> None:
        """`num_blocks`: the KV cache's blocks (engine.core.kv_cache), the scratch block included
        (default: `max_batch` sequences of `max_context`);
        `graphs`: replay decode steps from recordings where they apply (engine.model.decode_graphs);
        `step_tokens`: the most tokens a step runs (sizes the sliding-window layers' blocks)."""
        use_slot_attention(model)
        model.requires_grad_(False)  # inference only; a traced graph takes weights as constants
        self.model = model
        self.lean_wanted = lean and lean_supported(model)
        log.info(
            "%s", lean_path(model) if lean else f"{type(model).__name__}: transformers' forward (lean off)"
        )
        self.lean: LeanLlama | None = None
        self.graphs_wanted = graphs
        self.graphs: DecodeGraphs | None = None
        self.prepared = False
        cfg = model.config.get_text_config()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_context = max_context
        self.max_batch = max_batch
        self.row_multiple = ROW_MULTIPLE  # see LeanLlama.row_multiple
        self._logits: torch.Tensor | None = None  # see `_as_float`
        num_blocks = num_blocks or max_batch * blocks_for(max_context) + 1
        # sliding-window layers (one window for all of them) keep only their windows, in their own
        # cache and blocks (engine.core.window); the lean forward reads them there
        windows = layer_windows(model) if self.lean_wanted else [None] * cfg.num_hidden_layers
        sizes = {w for w in windows if w is not None}
        self.window: int | None = sizes.pop() if len(sizes) == 1 and min(sizes) < max_context else None
        apart = [i for i, w in enumerate(windows) if self.window is not None and w == self.window]
        kept = [i for i in range(cfg.num_hidden_layers) if i not in apart]

        def cache(layers: list[int], blocks: int) -> PagedKVCache:
            return PagedKVCache(
                len(layers), blocks, cfg.num_key_value_heads, head_dim, self.dtype, self.device, layers
            )

        with one_thread():  # made here, on the loading thread: see engine.model.threads
            self.cache = cache(kept, num_blocks)
            self.window_cache: PagedKVCache | None = None
            if self.window is not None:
                blocks = window_pool_blocks(self.window, max_batch, step_tokens, num_blocks)
                self.window_cache = cache(apart, blocks)

    def prepare(self, threads: int) -> None:
        """Per-thread set-up, called on the engine thread before its first step.

        On CPU: torch's thread count, and oneDNN weight packing, which must happen on the
        thread that runs the model (packed from another thread, the same products measured
        ~35% slower here). A model of a lean family gets the lean forward (engine.model.lean), which packs
        its own fused weights, and its decode graphs (recorded lazily, on this thread).
        """
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        if self.prepared:  # an engine restart on the same runner: the weights are packed already
            return
        self.prepared = True
        if self.lean_wanted:
            self.lean = LeanLlama(self.model, batch_hint=self.max_batch)
            self.row_multiple = self.lean.row_multiple
        elif packing_available(self.device, self.dtype):
            pack_linears(self.model, batch_hint=self.max_batch)
        if self.lean is not None and self.device.type == "cpu":
            _own_copies(self.model)  # what the lean forward left of the model: small but for the embedding
        # the weights the fused products were concatenated or packed from are free now: back to the
        # OS (SmolLM2's Q4_1 server kept ~41 MiB of them in the heap, a 1 B Q4_1 model ~380 MiB)
        release_memory()
        lean = self.lean
        if self.graphs_wanted and lean is not None and lean.capturable:
            max_len = kv_length(self.max_context)
            if self.device.type == "cpu" and not lean.gpu:  # packed, quantized or plain: all traceable
                # (lean.gpu on a CPU: the GPU kernels under Triton's interpreter, which do not trace)
                self.graphs = CpuTraces(
                    lean.forward,
                    self.cache,
                    self.max_batch,
                    max_len,
                    weights=lean.trace_weights,
                    min_rows=lean.min_rows,
                    window=self.window_cache,
                )
            elif self.device.type == "cuda" and lean.plain:  # CUDA graphs take plain weights only
                self.graphs = CudaGraphs(
                    lean.forward, self.cache, self.max_batch, max_len, window=self.window_cache
                )

    @torch.inference_mode()
    def run(self, plan: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step. Returns (logits [K, V] as float32, the K sequences they belong to)."""
        decode = [s for s, n in plan if n == 1 and s.remaining == 1]
        prefill = [(s, n) for s, n in plan if not (n == 1 and s.remaining == 1)]
        if self.graphs is not None and not prefill:
            logits = self.graphs.run(
                [s.token_ids[-1] for s in decode],
                [s.num_computed for s in decode],
                [s.block_table for s in decode],
                [s.window_table for s in decode],
            )
            if logits is not None:
                return self._as_float(logits), decode
        # eagerly, longest first: the decode rows split into groups of similar key lengths
        decode.sort(key=lambda s: s.num_computed, reverse=True)
        ids = [s.token_ids[-1] for s in decode]
        pos = [s.num_computed for s in decode]
        total = len(decode) + sum(n for _, n in prefill)
        pad = round_up(total, self.row_multiple) - total
        ids += [0] * pad
        pos += [0] * pad
        n_dec = len(ids)
        lens = [p + 1 for p in pos]
        spans = decode_groups([kv_length(n) for n in lens])  # (start, count, kv length)

        chunks: list[tuple[int, int, int, Sequence]] = []  # token start, count, start position
        logit_rows = list(range(len(decode)))
        sampled = list(decode)
        for s, n in prefill:
            start = s.num_computed
            chunks.append((len(ids), n, start, s))
            ids += s.token_ids[start : start + n]
            pos += range(start, start + n)
            if start + n == s.num_tokens:
                logit_rows.append(len(ids) - 1)
                sampled.append(s)
        widths = [kv_length(start + n) // BLOCK_SIZE for _, n, start, _ in chunks]

        # the blocks each token writes and the tables attention reads, over the block tables and,
        # for a model with sliding-window layers apart, over the window tables
        caches = [(self.cache, attrgetter("block_table"))]
        if self.window_cache is not None:
            caches.append((self.window_cache, attrgetter("window_table")))
        indices: list[list[int]] = []
        for _, table_of in caches:
            tables = [table_of(s) for s in decode] + [[0]] * pad
            blocks = [t[p // BLOCK_SIZE] for t, p in zip(tables, pos, strict=False)]
            for _, n, start, s in chunks:
                blocks += [table_of(s)[p // BLOCK_SIZE] for p in range(start, start + n)]
            flat: list[int] = []
            for start, count, kv in spans:
                width = kv // BLOCK_SIZE
                flat += [
                    b for tb in tables[start : start + count] for b in (*tb[:width], *[0] * (width - len(tb)))
                ]
            for (_, _, _, s), w in zip(chunks, widths, strict=True):
                tb = table_of(s)
                flat += [*tb[:w], *[0] * (w - len(tb))]
            indices.append(blocks + flat)

        # Logits only for rows that sample, padded to a multiple of `row_multiple` rows (a step
        # that only prefills the middle of a prompt still computes throwaway rows).
        keep = logit_rows or [0]
        keep = keep + [keep[-1]] * (round_up(len(keep), self.row_multiple) - len(keep))
        # One host-to-device copy for every index the step needs; the pieces are views.
        t = len(ids)
        offsets = [p % BLOCK_SIZE for p in pos]
        packed = torch.tensor([*ids, *pos, *offsets, *lens, *keep, *(i for part in indices for i in part)])
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(self.device, non_blocking=True)
        ids_t, pos_t, offsets_t = packed[: 3 * t].view(3, t)
        lens_t = packed[3 * t : 3 * t + n_dec]
        at = 3 * t + n_dec + len(keep)
        keep_t = packed[3 * t + n_dec : at]
        steps: list[StepMeta] = []
        for cache, _ in caches:
            blocks_t = packed[at : at + t]
            at += t
            groups: list[DecodeGroup] = []
            for start, count, kv in spans:
                width = kv // BLOCK_SIZE
                group_tables = packed[at : at + count * width].view(count, width)
                groups.append(DecodeGroup(start, count, group_tables, lens_t[start : start + count], kv))
                at += count * width
            prefills: list[PrefillChunk] = []
            for (start_tok, n, start, _), w in zip(chunks, widths, strict=True):
                prefills.append(PrefillChunk(start_tok, n, packed[at : at + w], start))
                at += w
            steps.append(StepMeta(cache, blocks_t, offsets_t, pos_t, n_dec, groups, prefills))
        step = steps[0]
        step.window = steps[1] if len(steps) > 1 else None
        if self.lean is not None:
            logits = self._as_float(self.lean.forward(ids_t, pos_t, step, keep_t)[: len(sampled)])
        else:
            out = self.model(
                input_ids=ids_t[None],
                position_ids=pos_t[None],
                use_cache=False,
                logits_to_keep=keep_t,
                hearth_step=step,
            )
            logits = self._as_float(out.logits[0, : len(sampled)])  # [K, V]
        return logits, sampled

    def _as_float(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [K, V] as float32, copied into a buffer kept from step to step (valid until the next
        step): a new one past glibc's mmap threshold (32 MiB: Gemma 3 from 32 rows) was mapped and
        its pages faulted in at every step, ~8 ms of a ~100 ms one."""
        if logits.dtype == torch.float32:
            return logits
        rows, vocab = logits.shape
        buffer = self._logits
        if buffer is None or buffer.shape[0] < rows or buffer.shape[1] != vocab:
            buffer = self._logits = torch.empty(max(rows, self.max_batch), vocab, device=logits.device)
        return buffer[:rows].copy_(logits)


def _own_copies(model: Any) -> None:
    """The float parameters the lean forward left in `model` (norms, an untied embedding) copied into
    memory of their own. Loaded from safetensors they point into the file's mapping, and while any
    of them does, the whole mapping stays resident beside the packed copies made from it (a 1 B
    bfloat16 model held 2 GiB of it)."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            plain = type(param) is torch.nn.Parameter and type(param.data) is torch.Tensor
            if plain and param.is_floating_point():
                module._parameters[name] = torch.nn.Parameter(param.detach().clone(), requires_grad=False)

"""The only place that touches the model, the device and the KV cache.

`ModelRunner.run(plan)` packs one step's tokens into a single row, runs the model with the
slot attention (engine.attention), and returns the logits of the last token of every sequence
that is due a new token. The model runs through the lean forward (engine.model.lean) where it
supports the model, else through transformers' own (the log says which); decode-only steps replay
recorded graphs of the lean forward (engine.model.decode_graphs): CUDA graphs on a GPU, TorchScript
traces on a CPU.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AttentionInterface

from engine.core.kv_cache import SlotKVCache
from engine.core.sequence import Sequence
from engine.model.attention import KV_BLOCK, ROW_MULTIPLE, PrefillChunk, StepMeta, round_up, slot_attention
from engine.model.cpu_traces import CpuTraces
from engine.model.cuda_graphs import CudaGraphs
from engine.model.decode_graphs import DecodeGraphs
from engine.model.lean import LeanLlama, lean_path
from engine.model.lean import supported as lean_supported
from engine.model.packed_linear import pack_linears, packing_available

ATTENTION_NAME = "hearth_slots"
log = logging.getLogger("hearth.engine")


def use_slot_attention(model: Any) -> None:
    """Register the slot attention with transformers and switch `model` to it."""
    AttentionInterface.register(ATTENTION_NAME, slot_attention)
    model.set_attn_implementation(ATTENTION_NAME)


class ModelRunner:
    def __init__(
        self, model: Any, max_batch: int, max_context: int, lean: bool = True, graphs: bool = True
    ) -> None:
        """`graphs`: replay decode steps from recordings where they apply (engine.model.decode_graphs)."""
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
        self.cache = SlotKVCache(
            num_layers=cfg.num_hidden_layers,
            num_slots=max_batch + 1,
            kv_heads=cfg.num_key_value_heads,
            max_len=round_up(max_context, KV_BLOCK),
            head_dim=head_dim,
            dtype=self.dtype,
            device=self.device,
        )

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
        lean = self.lean
        if self.graphs_wanted and lean is not None and lean.capturable:
            if self.device.type == "cpu":  # packed, quantized or plain weights: all traceable
                self.graphs = CpuTraces(
                    lean.forward, self.cache, self.max_batch, lean.trace_weights, lean.min_rows
                )
            elif self.device.type == "cuda" and lean.plain:  # CUDA graphs take plain weights only
                self.graphs = CudaGraphs(lean.forward, self.cache, self.max_batch)

    @torch.inference_mode()
    def run(self, plan: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step. Returns (logits [K, V] as float32, the K sequences they belong to)."""
        decode = [s for s, n in plan if n == 1 and s.remaining == 1]
        prefill = [(s, n) for s, n in plan if not (n == 1 and s.remaining == 1)]
        if self.graphs is not None and not prefill:
            logits = self.graphs.run(
                [s.token_ids[-1] for s in decode],
                [s.num_computed for s in decode],
                [s.slot or 0 for s in decode],
            )
            if logits is not None:
                return logits, decode
        ids: list[int] = []
        slots: list[int] = []
        pos: list[int] = []
        for s in decode:
            assert s.slot is not None
            ids.append(s.token_ids[-1])
            slots.append(s.slot)
            pos.append(s.num_computed)
        total = len(decode) + sum(n for _, n in prefill)
        pad = round_up(total, self.row_multiple) - total
        ids += [0] * pad
        slots += [0] * pad
        pos += [0] * pad
        n_dec = len(ids)

        chunks: list[PrefillChunk] = []
        logit_rows = list(range(len(decode)))
        sampled = list(decode)
        for s, n in prefill:
            assert s.slot is not None
            start = s.num_computed
            chunks.append(PrefillChunk(token_start=len(ids), count=n, slot=s.slot, start_pos=start))
            ids += s.token_ids[start : start + n]
            slots += [s.slot] * n
            pos += range(start, start + n)
            if start + n == s.num_tokens:
                logit_rows.append(len(ids) - 1)
                sampled.append(s)

        lens = [0] * (max(slots[:n_dec], default=0) + 1)
        for slot, p in zip(slots[:n_dec], pos[:n_dec], strict=True):
            lens[slot] = max(lens[slot], p + 1)
        view = len(lens) if n_dec else 0
        decode_kv_len = round_up(max(lens), KV_BLOCK) if n_dec else 0
        if n_dec:
            self.cache.ensure_clean(range(view), decode_kv_len)
        for c in chunks:
            self.cache.ensure_clean([c.slot], c.kv_len)

        # Logits only for rows that sample, padded to a multiple of `row_multiple` rows (a step
        # that only prefills the middle of a prompt still computes throwaway rows).
        keep = logit_rows or [0]
        keep = keep + [keep[-1]] * (round_up(len(keep), self.row_multiple) - len(keep))
        # One host-to-device copy for every index the step needs; the pieces are views.
        t, n_lens = len(ids), len(lens)
        packed = torch.tensor([*ids, *slots, *pos, *lens, *keep])
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(self.device, non_blocking=True)
        ids_t, slots_t, pos_t = packed[:t], packed[t : 2 * t], packed[2 * t : 3 * t]
        step = StepMeta(
            cache=self.cache,
            write_slots=slots_t,
            write_pos=pos_t,
            decode_tokens=n_dec,
            decode_slots=slots_t[:n_dec],
            decode_lens=packed[3 * t : 3 * t + n_lens],
            view_slots=view,
            decode_kv_len=decode_kv_len,
            prefills=chunks,
        )
        keep_t = packed[3 * t + n_lens :]
        if self.lean is not None:
            logits = self.lean.forward(ids_t, pos_t, step, keep_t)[: len(sampled)].float()
        else:
            out = self.model(
                input_ids=ids_t[None],
                position_ids=pos_t[None],
                use_cache=False,
                logits_to_keep=keep_t,
                hearth_step=step,
            )
            logits = out.logits[0, : len(sampled)].float()  # [K, V]
        return logits, sampled

"""Decode steps replayed from recorded graphs: CUDA graphs on a GPU, TorchScript traces on a CPU.

At one stream, a decode step is hundreds of small ops; issuing them from Python costs about as
much as running them (on a GPU far more). `DecodeGraphs` records the lean forward
(engine.llama) of a decode-only step once per bucket and replays it:
- on CUDA, as a CUDA graph: one launch per step;
- on a CPU, for quantized models, as a `torch.jit.trace` of the step: the same aten ops run
  from TorchScript's C++ interpreter, without Python in between (measured on SmolLM2 int4, one
  stream, 2 cores: 14.6 ms a step eager, 10.4 ms traced). Plain weights on a CPU run oneDNN's
  packed products, which TorchScript cannot record, so they stay eager. Tracing takes a
  fraction of a second per bucket and compiles nothing. `torch.jit.trace` is deprecated in
  favour of `torch.compile`, whose first compile of this step took over 10 minutes here; any
  tracing error falls back to eager.
  On a CPU only buckets of up to `CPU_MAX_ROWS` rows are traced: each traced row copies its
  slot's keys and values out of the cache (below), a cost that grows with the batch, while the
  Python overhead a trace saves per step does not.

In both:
- a bucket is (rows, kv length): rows 1, 2, 4, 8, then multiples of 8 up to the slot count;
  kv lengths 256, 512, ... doubling up to the cache's length. A step takes the smallest
  bucket that holds it; padding rows write to the scratch slot 0 and read its first position.
- decode attention runs gathered (engine.attention), so a graph's shapes depend only on its
  bucket, never on which slots the sequences hold.
- inputs (token, position, slot and kv length of each row) are copied from one pinned host
  buffer into static device buffers, in one copy; logits come back in the graph's own output
  buffer, read before the next replay (the engine samples every step before the next one).
- graphs are recorded lazily, the first time a bucket is needed (CUDA graphs into one shared
  memory pool).

Steps with prompt tokens, and buckets beyond the largest, run eagerly; so does every step after
a capture or trace that failed (logged as a warning).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.attention import StepMeta
from engine.kv_cache import SlotKVCache

log = logging.getLogger("hearth.engine")

MIN_KV = 256
CPU_MAX_ROWS = 4

Forward = Callable[[torch.Tensor, torch.Tensor, StepMeta, torch.Tensor], torch.Tensor]


def batch_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_rows (which is always the last)."""
    sizes = [b for b in (1, 2, 4) if b < max_rows] + list(range(8, max_rows, 8))
    return [*sizes, max_rows]


def kv_buckets(max_len: int) -> list[int]:
    """256, 512, ... doubling, up to max_len (which is always the last)."""
    sizes = []
    n = MIN_KV
    while n < max_len:
        sizes.append(n)
        n *= 2
    return [*sizes, max_len]


def _fit(buckets: list[int], n: int) -> int | None:
    return next((b for b in buckets if b >= n), None)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # CUDA
    logits: torch.Tensor  # [rows, V] float32, the output buffer a replay overwrites (CUDA)
    traced: Callable[[torch.Tensor], torch.Tensor] | None = None  # CPU: inputs -> logits


class DecodeGraphs:
    """`run(ids, pos, slots)` -> logits [n, V] of a decode-only step, or None when it fits no bucket."""

    def __init__(self, forward: Forward, cache: SlotKVCache, max_rows: int) -> None:
        self.forward = forward
        self.cache = cache
        self.cuda = cache.k.device.type == "cuda"
        if not self.cuda:
            max_rows = min(max_rows, CPU_MAX_ROWS)
        self.rows = batch_buckets(max_rows)
        self.kv = kv_buckets(cache.max_len)
        device = cache.k.device
        rows = self.rows[-1]
        # the inputs of a bucket of r rows: 4 x r values (token ids, positions, slots, kv lengths)
        # at the start of one pinned host buffer and of one device buffer, copied in one go
        self._host = torch.zeros(4 * rows, dtype=torch.long, pin_memory=self.cuda)
        self._inputs = torch.zeros(4 * rows, dtype=torch.long, device=device)
        self._keep = torch.arange(rows, device=device)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: Any = None  # the memory pool every graph shares
        self.replays = 0
        self.failed: str | None = None  # why capturing failed: every step runs eagerly

    @property
    def captured(self) -> set[tuple[int, int]]:
        """The (rows, kv length) buckets captured so far."""
        return set(self._graphs)

    def run(self, ids: list[int], pos: list[int], slots: list[int]) -> torch.Tensor | None:
        if self.failed is not None:
            return None
        n = len(ids)
        rows = _fit(self.rows, n)
        kv = _fit(self.kv, max(pos) + 1)
        if rows is None or kv is None:
            return None
        pad = rows - n
        self.cache.ensure_clean([*slots, 0], kv)  # rows read whole buckets; padding reads slot 0
        lens = [p + 1 for p in pos]
        host = self._host[: 4 * rows]
        host.copy_(torch.tensor([*ids, *[0] * pad, *pos, *[0] * pad, *slots, *[0] * pad, *lens, *[1] * pad]))
        self._inputs[: 4 * rows].copy_(host, non_blocking=True)
        graph = self._graphs.get((rows, kv))
        if graph is None:
            try:
                graph = self._capture(rows, kv)
            except Exception as exc:  # never fail a request for a missing speed-up
                what = "CUDA graph capture" if self.cuda else "tracing"
                log.warning("%s failed (%.300r); decode steps run eagerly from now on", what, exc)
                self.failed = repr(exc)
                return None
        if graph.traced is not None:
            logits = graph.traced(self._inputs[: 4 * rows])
        else:
            assert graph.graph is not None
            graph.graph.replay()
            logits = graph.logits
        self.replays += 1
        return logits[:n]

    def _step(self, rows: int, kv: int, inputs: torch.Tensor) -> torch.Tensor:
        """The recorded computation: the forward over `inputs` (ids, positions, slots, kv lengths
        of `rows` rows, [4 * rows]), for one bucket."""
        ids, pos, slots, lens = inputs.view(4, rows)
        step = StepMeta(  # built inside the capture: its masks are computed by the graph
            cache=self.cache,
            write_slots=slots,
            write_pos=pos,
            decode_tokens=rows,
            decode_slots=slots,
            decode_lens=lens,
            view_slots=0,
            decode_kv_len=kv,
            prefills=[],
            gather=True,
        )
        return self.forward(ids, pos, step, self._keep[:rows]).float()

    def _capture(self, rows: int, kv: int) -> _Graph:
        if not self.cuda:
            return self._trace(rows, kv)
        start = time.perf_counter()
        inputs = self._inputs[: 4 * rows].clone()
        self._inputs[: 3 * rows].zero_()  # warm-up and capture: every row writes and reads slot 0
        self._inputs[3 * rows : 4 * rows].fill_(1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: kernels pick their algorithms outside the capture
            self._step(rows, kv, self._inputs[: 4 * rows])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._step(rows, kv, self._inputs[: 4 * rows])
        self._pool = graph.pool()
        self._inputs[: 4 * rows] = inputs
        captured = _Graph(graph, logits)
        self._graphs[rows, kv] = captured
        seconds = time.perf_counter() - start
        log.info(
            "captured a CUDA graph for %d decode rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3
        )
        return captured

    def _trace(self, rows: int, kv: int) -> _Graph:
        """Trace the step on example inputs whose rows all write and read the scratch slot 0."""
        start = time.perf_counter()
        example = torch.zeros(4 * rows, dtype=torch.long)
        example[3 * rows :] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation, and "output may not generalize" notes
            traced = torch.jit.trace(
                lambda inputs: self._step(rows, kv, inputs), (example,), check_trace=False
            )
        for _ in range(2):  # TorchScript profiles the first call and optimizes at the second
            traced(example)
        recorded = _Graph(None, torch.empty(0), traced)
        self._graphs[rows, kv] = recorded
        seconds = time.perf_counter() - start
        log.info("traced the decode step for %d rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3)
        return recorded

"""Decode steps replayed from CUDA graphs: one launch per step instead of hundreds.

At one stream on a GPU, a decode step is a few hundred small kernels; launching them from
Python costs more than running them. `DecodeGraphs` captures the lean forward
(engine.llama) of a decode-only step once per bucket and replays it:
- a bucket is (rows, kv length): rows 1, 2, 4, 8, then multiples of 8 up to the slot count;
  kv lengths 256, 512, ... doubling up to the cache's length. A step takes the smallest
  bucket that holds it; padding rows write to the scratch slot 0 and read its first position.
- decode attention runs gathered (engine.attention), so a graph's shapes depend only on its
  bucket, never on which slots the sequences hold.
- inputs (token, position, slot and kv length of each row) are copied from one pinned host
  buffer into static device buffers, in one copy; logits come back in the graph's own output
  buffer, read before the next replay (the engine samples every step before the next one).
- graphs are captured lazily, the first time a bucket is needed, into one shared memory pool.

Steps with prompt tokens, and buckets beyond the largest, run eagerly; so does every step after
a capture that failed (logged as a warning). On a CPU (`cuda=False`,
for tests) the same buffers and buckets are used and "replay" calls the forward directly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.attention import StepMeta
from engine.kv_cache import SlotKVCache

log = logging.getLogger("hearth.engine")

MIN_KV = 256

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
    graph: torch.cuda.CUDAGraph | None  # None on CPU
    logits: torch.Tensor  # [rows, V] float32, the output buffer a replay overwrites


class DecodeGraphs:
    """`run(ids, pos, slots)` -> logits [n, V] of a decode-only step, or None when it fits no bucket."""

    def __init__(self, forward: Forward, cache: SlotKVCache, max_rows: int, cuda: bool = True) -> None:
        self.forward = forward
        self.cache = cache
        self.cuda = cuda
        self.rows = batch_buckets(max_rows)
        self.kv = kv_buckets(cache.max_len)
        device = cache.k.device
        rows = self.rows[-1]
        # the inputs of a bucket of r rows: 4 x r values (token ids, positions, slots, kv lengths)
        # at the start of one pinned host buffer and of one device buffer, copied in one go
        self._host = torch.zeros(4 * rows, dtype=torch.long, pin_memory=cuda)
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
                log.warning("CUDA graph capture failed (%r); decode steps run eagerly from now on", exc)
                self.failed = repr(exc)
                return None
        if graph.graph is not None:
            graph.graph.replay()
            logits = graph.logits
        else:
            logits = self._step(rows, kv)
        self.replays += 1
        return logits[:n]

    def _step(self, rows: int, kv: int) -> torch.Tensor:
        """The captured computation: the forward over the static inputs, for one bucket."""
        ids, pos, slots, lens = self._inputs[: 4 * rows].view(4, rows)
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
            eager = _Graph(None, torch.empty(0))
            self._graphs[rows, kv] = eager
            return eager
        start = time.perf_counter()
        inputs = self._inputs[: 4 * rows].clone()
        self._inputs[: 3 * rows].zero_()  # warm-up and capture: every row writes and reads slot 0
        self._inputs[3 * rows : 4 * rows].fill_(1)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: kernels pick their algorithms outside the capture
            self._step(rows, kv)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._step(rows, kv)
        self._pool = graph.pool()
        self._inputs[: 4 * rows] = inputs
        captured = _Graph(graph, logits)
        self._graphs[rows, kv] = captured
        seconds = time.perf_counter() - start
        log.info(
            "captured a CUDA graph for %d decode rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3
        )
        return captured

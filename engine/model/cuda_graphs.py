"""CUDA graphs of decode steps: one launch per step on a GPU (see `engine.model.decode_graphs`).

Every bucket's graph is captured into one shared memory pool, after a warm-up on a side stream
so that kernels pick their algorithms outside the capture. The inputs come from a pinned host
buffer.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from engine.model.decode_graphs import DecodeGraphs, Replay, log


class CudaGraphs(DecodeGraphs):
    what = "CUDA graph capture"
    pinned = True  # the inputs' host buffer
    _pool: Any = None  # the memory pool every graph shares (set at the first capture)

    def _record(self, rows: int, kv: int) -> Replay:
        start = time.perf_counter()
        size = self.input_size(rows, kv)
        inputs = self._inputs[:size].clone()
        self._inputs[:size] = self.example(rows, kv)  # warm-up and capture: every row uses block 0
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: kernels pick their algorithms outside the capture
            self._step(rows, kv, self._inputs[:size])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self._step(rows, kv, self._inputs[:size])
        self._pool = graph.pool()
        self._inputs[:size] = inputs
        seconds = time.perf_counter() - start
        log.info(
            "captured a CUDA graph for %d decode rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3
        )

        def replay(_inputs: torch.Tensor) -> torch.Tensor:
            graph.replay()  # reads the static input buffer, overwrites `logits`
            return logits

        return replay

"""TorchScript traces of decode steps on a CPU, for quantized models (see `engine.model.decode_graphs`).

A `torch.jit.trace` of the step runs the same aten ops from TorchScript's C++ interpreter, without
Python in between (measured on SmolLM2 int4, one stream, 2 cores: 14.6 ms a step eager, 10.4 ms
traced). Plain weights on a CPU run oneDNN's packed products, which TorchScript cannot record, so
they stay eager. Tracing takes a fraction of a second per bucket and compiles nothing.
`torch.jit.trace` is deprecated in favour of `torch.compile`, whose first compile of this step
took over 10 minutes here; any tracing error falls back to eager.

Only buckets of up to `CPU_MAX_ROWS` rows are traced: each traced row copies its keys and values
out of the cache's blocks (gathered attention), a cost that grows with the batch, while the Python
overhead a trace saves per step does not.
"""

from __future__ import annotations

import time
import warnings

import torch

from engine.core.kv_cache import PagedKVCache
from engine.model.decode_graphs import DecodeGraphs, Forward, Replay, log

CPU_MAX_ROWS = 4


class CpuTraces(DecodeGraphs):
    what = "tracing"

    def __init__(self, forward: Forward, cache: PagedKVCache, max_rows: int, max_len: int) -> None:
        super().__init__(forward, cache, min(max_rows, CPU_MAX_ROWS), max_len)

    def _record(self, rows: int, kv: int) -> Replay:
        """Trace the step on example inputs whose rows all write and read the scratch block 0."""
        start = time.perf_counter()
        example = self.example(rows, kv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation, and "output may not generalize" notes
            traced = torch.jit.trace(
                lambda inputs: self._step(rows, kv, inputs), (example,), check_trace=False
            )
        for _ in range(2):  # TorchScript profiles the first call and optimizes at the second
            traced(example)
        seconds = time.perf_counter() - start
        log.info("traced the decode step for %d rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3)
        return traced

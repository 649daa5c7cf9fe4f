"""TorchScript traces of decode steps on a CPU (see `engine.model.decode_graphs`).

A `torch.jit.trace` of the step runs the same aten ops from TorchScript's C++ interpreter, without
Python in between (measured on SmolLM2 int4, one stream, 2 cores: 14.6 ms a step eager, 10.4 ms
traced). Plain weights run oneDNN's packed products: a packed weight cannot be a trace's constant,
so the trace takes them as inputs (`weights`, the forward's own tensors, recognised by identity
while tracing), and their smallest bucket is 2 rows (`min_rows`: at 1 row oneDNN takes another
kernel, whose bits differ). Tracing takes a fraction of a second per bucket and compiles nothing.
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

from engine.model.decode_graphs import DecodeGraphs, Replay, log

CPU_MAX_ROWS = 4


class CpuTraces(DecodeGraphs):
    """Decode steps replayed from TorchScript traces; `weights` (oneDNN-packed weights, which cannot
    be a trace's constants) are passed to every replay as inputs."""

    what = "tracing"
    row_cap = CPU_MAX_ROWS

    def _record(self, rows: int, kv: int) -> Replay:
        """Trace the step on example inputs whose rows all write and read the scratch block 0."""
        start = time.perf_counter()
        example = self.example(rows, kv)
        weights = self.weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation, and "output may not generalize" notes
            # the weights are inputs by identity: the forward's own tensors become the graph's inputs
            traced = torch.jit.trace(
                lambda inputs, *_: self._step(rows, kv, inputs), (example, *weights), check_trace=False
            )
        slim(traced.graph)
        for _ in range(2):  # TorchScript profiles the first call and optimizes at the second
            traced(example, *weights)
        seconds = time.perf_counter() - start
        log.info("traced the decode step for %d rows, kv length %d, in %.0f ms", rows, kv, seconds * 1e3)
        return lambda inputs: traced(inputs, *weights)


def slim(graph: torch.Graph) -> None:
    """Fold the trace's shape arithmetic and repeated constants in place, before its first call.

    A traced step records every `size`/`slice`/`Int` the forward computes on shapes (~11,000 nodes
    for SmolLM2, 60 % of them constants), and TorchScript keeps ~4 KB of memory per node for each
    recording. Constant propagation, pooling, common subexpressions and dead code leave ~40 % of
    them (measured: ~45 -> ~29 MiB a bucket, the same logits)."""
    torch._C._jit_pass_constant_propagation(graph)
    torch._C._jit_pass_constant_pooling(graph)  # type: ignore[attr-defined]
    torch._C._jit_pass_cse(graph)
    torch._C._jit_pass_dce(graph)

"""Torch work done outside the engine thread runs on one thread.

The engine runs the model on a thread of its own. Once another thread has run a parallel torch op,
OpenMP keeps a second thread team, and with more OpenMP threads than cores libgomp stops spinning
between parallel regions: the engine thread's thousands of small ops a step then wait for their
workers to wake. Measured on 2 cores: int8 quantization at load did it (18 against 34 tok/s at one
stream), and so did zeroing the KV cache on the loading thread (one SmolLM2 int4 step 27 ms on the
engine thread against 12 ms without). Loading, building the cache and encoding embeddings on a
thread of their own therefore run single-threaded (`one_thread`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: `taskset`, a container's cpuset, a test
    worker's share), the default thread count of an engine; every core where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded on this thread for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

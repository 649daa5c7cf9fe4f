"""Decode steps replayed from a recording: the buckets, inputs and replay shared by CUDA graphs
(`engine.model.cuda_graphs`) and CPU traces (`engine.model.cpu_traces`).

At one stream, a decode step is hundreds of small ops; issuing them from Python costs about as
much as running them (on a GPU far more). A `DecodeGraphs` records the lean forward
(engine.model.lean) of a decode-only step once per bucket and replays it:
- a bucket is (rows, kv length): rows 1, 2, 4, 8, then multiples of 8 up to `max_batch_size`;
  kv lengths 256, 512, ... doubling up to `max_context`. A step takes the smallest bucket that
  holds it; padding rows write to the scratch block 0 and read its first position.
- decode attention gathers each row's keys and values through its block table
  (engine.model.attention), so a recording's shapes depend only on its bucket, never on which
  blocks the sequences hold.
- inputs (token, position and kv length of each row, then the rows' block tables padded with
  block 0 to kv length / BLOCK_SIZE entries, then as many of their sliding-window tables when the
  model keeps those layers apart: engine.core.window) are copied from one host buffer into a static
  device buffer, in one copy; logits come back in the recording's own output buffer,
  read before the next replay (the engine samples every step before the next one).
- recordings are made lazily, the first time a bucket is needed.

Steps with prompt tokens, and buckets beyond the largest, run eagerly; so does every step after
a recording that failed (logged as a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from engine.core.blocks import BLOCK_SIZE
from engine.core.kv_cache import PagedKVCache
from engine.model.attention import DecodeGroup, StepMeta

log = logging.getLogger("hearth.engine")

MIN_KV = 256

Forward = Callable[[torch.Tensor, torch.Tensor, StepMeta, torch.Tensor], torch.Tensor]
Replay = Callable[[torch.Tensor], torch.Tensor]  # the bucket's inputs (`input_size`) -> logits [rows, V]


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


def input_size(rows: int, kv: int, tables: int = 1) -> int:
    """Values in the inputs of a (rows, kv length) bucket: token, position and kv length of each
    row, then each row's block table of kv / BLOCK_SIZE entries (and its window table: `tables` 2)."""
    return rows * (3 + tables * (kv // BLOCK_SIZE))


def _fit(buckets: list[int], n: int) -> int | None:
    return next((b for b in buckets if b >= n), None)


class DecodeGraphs:
    """`run(ids, pos, tables)` -> logits [n, V] of a decode-only step, or None when it fits no bucket.

    Subclasses say how a bucket is recorded (`_record`) and what a failure is called (`what`)."""

    what = "recording"
    row_cap: int | None = None  # the most rows a recording takes, whatever the batch
    pinned = False  # whether the inputs' host buffer is pinned (CUDA)

    def __init__(
        self,
        forward: Forward,
        cache: PagedKVCache,
        max_rows: int,
        max_len: int,
        *,
        min_rows: int = 1,
        weights: Sequence[torch.Tensor] = (),
        window: PagedKVCache | None = None,
    ) -> None:
        """`min_rows`: the smallest bucket (steps of fewer rows are padded to it); `weights`: tensors
        the recording takes as inputs rather than constants (see `CpuTraces`); `window`: the
        sliding-window layers' cache, read through each row's window table."""
        self.forward = forward
        self.cache = cache
        self.window = window
        self.tables = 2 if window is not None else 1
        self.weights = tuple(weights)
        max_rows = min(max_rows, self.row_cap or max_rows)
        self.rows = sorted({max(b, min_rows) for b in batch_buckets(max_rows)})
        self.kv = kv_buckets(max_len)
        device = cache.k.device
        size = self.input_size(self.rows[-1], self.kv[-1])
        # the inputs of a bucket at the start of one host buffer and of one device buffer,
        # copied in one go
        self._host = torch.zeros(size, dtype=torch.long, pin_memory=self.pinned)
        self._inputs = torch.zeros(size, dtype=torch.long, device=device)
        rows = self.rows[-1]
        self._keep = torch.arange(rows, device=device)
        self._replays: dict[tuple[int, int], Replay] = {}
        self.replays = 0
        self.failed: str | None = None  # why recording failed: every step runs eagerly

    @property
    def captured(self) -> set[tuple[int, int]]:
        """The (rows, kv length) buckets recorded so far."""
        return set(self._replays)

    def input_size(self, rows: int, kv: int) -> int:
        return input_size(rows, kv, self.tables)

    def run(
        self, ids: list[int], pos: list[int], tables: list[list[int]], windows: list[list[int]] | None = None
    ) -> torch.Tensor | None:
        """`windows`: the rows' window tables, when the model keeps sliding-window layers apart."""
        if self.failed is not None:
            return None
        n = len(ids)
        rows = _fit(self.rows, n)
        kv = _fit(self.kv, max(pos) + 1)
        if rows is None or kv is None:
            return None
        pad, width, size = rows - n, kv // BLOCK_SIZE, self.input_size(rows, kv)
        lens = [p + 1 for p in pos]
        flat: list[int] = []
        for part in (tables, windows) if self.window is not None else (tables,):
            assert part is not None
            flat += [b for t in part for b in (*t[:width], *[0] * (width - len(t)))]
            flat += [0] * (pad * width)
        host = self._host[:size]
        host.copy_(torch.tensor([*ids, *[0] * pad, *pos, *[0] * pad, *lens, *[1] * pad, *flat]))
        self._inputs[:size].copy_(host, non_blocking=True)
        replay = self._replays.get((rows, kv))
        if replay is None:
            try:
                replay = self._replays[rows, kv] = self._record(rows, kv)
            except Exception as exc:  # never fail a request for a missing speed-up
                log.warning("%s failed (%.300r); decode steps run eagerly from now on", self.what, exc)
                self.failed = repr(exc)
                return None
        logits = replay(self._inputs[:size])
        self.replays += 1
        return logits[:n]

    def _step(self, rows: int, kv: int, inputs: torch.Tensor) -> torch.Tensor:
        """The recorded computation: the forward over `inputs` (ids, positions, kv lengths of
        `rows` rows, then their block tables: `input_size(rows, kv)`), for one bucket."""
        ids, pos, lens = inputs[: 3 * rows].view(3, rows)
        width = kv // BLOCK_SIZE
        tables = inputs[3 * rows : self.input_size(rows, kv)].view(self.tables, rows, width)

        def over(cache: PagedKVCache, tables: torch.Tensor) -> StepMeta:
            # built inside the recording: its masks are computed by the graph
            at = torch.div(pos, BLOCK_SIZE, rounding_mode="floor")[:, None]
            return StepMeta(
                cache=cache,
                write_blocks=tables.gather(1, at)[:, 0],
                write_offsets=torch.remainder(pos, BLOCK_SIZE),
                write_pos=pos,
                decode_tokens=rows,
                decode=[DecodeGroup(0, rows, tables, lens, kv)],
                prefills=[],
            )

        step = over(self.cache, tables[0])
        if self.window is not None:
            step.window = over(self.window, tables[1])
        return self.forward(ids, pos, step, self._keep[:rows])  # the runner makes it float32

    def example(self, rows: int, kv: int) -> torch.Tensor:
        """Inputs for a recording: every row writes and reads the scratch block 0."""
        inputs = torch.zeros(self.input_size(rows, kv), dtype=torch.long, device=self._inputs.device)
        inputs[2 * rows : 3 * rows] = 1  # kv lengths
        return inputs

    def _record(self, rows: int, kv: int) -> Replay:
        raise NotImplementedError

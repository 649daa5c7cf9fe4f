"""The dynamic batcher: one thread runs every embedding forward pass of a model.

Requests put jobs (lists of token id lists) in a queue; each round the thread takes every job
waiting, sorts their inputs into length buckets and runs each bucket in passes of at most
`max_batch` inputs, so many small requests share passes. An input is padded to its own bucket's
length whatever else is waiting, and attention masks out the padding, so its vector does not
depend on what it was batched with (only the batch size varies; tests check to 1e-6).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.core.engine import EngineDeadError, QueueFullError
from engine.core.request import EngineStats
from engine.core.worker import Worker
from engine.model.threads import available_cores

log = logging.getLogger("hearth.embed")

# Forward pass: [batch, length] ids and 0/1 mask (right-padded) -> [batch, dim] float32 vectors.
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bucket_length(n: int, limit: int) -> int:
    """The padded length of an input of `n` tokens: a multiple of 8 up to 64, of 32 up to 512, then
    of 128; never past `limit` (the model's positions) unless `n` itself is."""
    step = 8 if n <= 64 else 32 if n <= 512 else 128
    return max(n, min(-(-n // step) * step, limit))


@dataclass(eq=False)
class Job:
    """One request's inputs and where its vectors go (set on the event loop that asked)."""

    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[torch.Tensor]
    vectors: list[torch.Tensor | None] = field(default_factory=list)
    left: int = 0

    def __post_init__(self) -> None:
        self.vectors = [None] * len(self.inputs)
        self.left = len(self.inputs)

    def resolve(self, result: torch.Tensor | BaseException) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future[torch.Tensor], result: torch.Tensor | BaseException) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher(Worker):
    """Runs `forward` on its own thread over the jobs `submit` queues (see the module doc)."""

    def __init__(
        self,
        name: str,
        forward: Forward,
        *,
        device: torch.device,
        pad_id: int,
        max_batch: int,
        max_waiting: int,
        position_limit: int,
        threads: int = 0,
    ) -> None:
        self.name = name
        self._forward = forward
        self._device = device
        self._pad_id = pad_id
        self._max_batch = max_batch
        self._max_waiting = max_waiting
        self._limit = position_limit
        self._threads = threads or available_cores()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stats = EngineStats()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.dead_reason: str | None = None

    def start(self) -> None:
        self._spawn(f"embed-{self.name}")

    async def submit(self, inputs: list[list[int]]) -> torch.Tensor:
        """The [len(inputs), dim] float32 vectors of `inputs` (each non-empty, within the model's
        window). Raises `QueueFullError` when `max_waiting` inputs already wait (a request alone in
        the queue is always taken), `EngineDeadError` when the thread has stopped."""
        if not self.alive or self.dead_reason is not None or self._stopping:
            raise EngineDeadError(self.dead_reason or f"the embedding engine of {self.name} is not running")
        loop = asyncio.get_running_loop()
        job = Job(inputs, loop, loop.create_future())
        with self._lock:
            waiting = self._stats.waiting
            if waiting and waiting + len(inputs) > self._max_waiting:
                raise QueueFullError(f"{waiting} inputs are waiting for model {self.name} (max_waiting)")
            self._stats.waiting += len(inputs)
            self._stats.submitted += 1
            self._stats.prompt_tokens += sum(len(ids) for ids in inputs)
        self._inbox.put(job)
        return await job.future

    def _main(self) -> None:
        if self._device.type == "cpu":
            torch.set_num_threads(self._threads)
        log.info("embedding engine for %s running (%d threads)", self.name, self._threads)
        try:
            with torch.inference_mode():
                while not self._stopping:
                    jobs = self._take()
                    if jobs:
                        self._round(jobs)
        except BaseException as exc:  # the thread must never die silently
            self.dead_reason = f"embedding engine thread died: {exc!r}"
            log.exception("embedding engine for %s died", self.name)
            raise
        finally:
            self._fail_queued(EngineDeadError(self.dead_reason or "the server is shutting down"))

    def _take(self) -> list[Job]:
        """Every job waiting now (blocking for the first); stops at the shutdown marker."""
        jobs: list[Job] = []
        item = self._inbox.get()
        while item is not None:
            jobs.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
        self._stopping = True
        self._count(waiting=-sum(len(j.inputs) for j in jobs))
        self._fail(jobs, EngineDeadError("the server is shutting down"))
        return []

    def _round(self, jobs: list[Job]) -> None:
        """One pass per bucket and `max_batch` inputs over the jobs' inputs (cancelled jobs skipped)."""
        live = [job for job in jobs if not job.future.cancelled()]
        self._count(waiting=-sum(len(j.inputs) for j in jobs), aborted=len(jobs) - len(live))
        buckets: dict[int, list[tuple[Job, int]]] = {}
        for job in live:
            for i, ids in enumerate(job.inputs):
                buckets.setdefault(bucket_length(len(ids), self._limit), []).append((job, i))
        failed: set[Job] = set()
        for length in sorted(buckets):
            items = buckets[length]
            for start in range(0, len(items), self._max_batch):
                part = [(job, i) for job, i in items[start : start + self._max_batch] if job not in failed]
                if part:
                    self._pass(length, part, failed)
        for job in live:
            if job not in failed and job.left == 0:
                self._count(finished=1)  # first: a caller woken by its result may read the stats at once
                job.resolve(torch.stack([v for v in job.vectors if v is not None]))

    def _pass(self, length: int, part: list[tuple[Job, int]], failed: set[Job]) -> None:
        """One forward pass over `part`'s inputs, padded to `length`."""
        inputs = [job.inputs[i] for job, i in part]
        ids = torch.full((len(inputs), length), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), length), dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        self._count(running=len(inputs))
        try:
            vectors = self._forward(ids.to(self._device), mask.to(self._device)).float().cpu()
        except Exception as exc:  # this pass's requests fail; the engine keeps serving
            log.exception("embedding pass of %d inputs failed", len(inputs))
            jobs = {job for job, _ in part} - failed
            failed.update(jobs)
            self._fail(list(jobs), RuntimeError(f"the embedding pass failed: {type(exc).__name__}: {exc}"))
            return
        finally:
            self._count(running=-len(inputs), steps=1)
        for row, (job, i) in enumerate(part):
            job.vectors[i] = vectors[row]
            job.left -= 1

    def _fail(self, jobs: list[Job], error: BaseException) -> None:
        self._count(failed=len(jobs))  # counted before the callers wake (see `_round`)
        for job in jobs:
            job.resolve(error)

    def _fail_queued(self, error: BaseException) -> None:
        jobs = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                jobs.append(item)
        self._count(waiting=-sum(len(j.inputs) for j in jobs))
        self._fail(jobs, error)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._stats, name, getattr(self._stats, name) + value)

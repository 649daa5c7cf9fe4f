"""A model's worker thread as the server sees it: alive or not, its counters, started and stopped.

The generation `Engine` (engine.core.engine) and the embedding `Batcher` (engine.embed.batcher) each
run one thread fed through an inbox; what they share is here. A subclass sets the attributes in its
`__init__` and defines `_main`, the thread's body.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from typing import Any

from engine.core.request import EngineStats


class Worker:
    _inbox: queue.SimpleQueue[Any]  # None tells the thread to stop
    _lock: threading.Lock  # guards _stats
    _stats: EngineStats
    _thread: threading.Thread | None
    _stopping: bool

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> EngineStats:
        """A copy of the counters."""
        with self._lock:
            return replace(self._stats)

    def _spawn(self, name: str) -> None:
        """Start the thread (a daemon: it never holds the process up)."""
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop the thread: the work it holds is dropped; waits for it up to 30 s."""
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

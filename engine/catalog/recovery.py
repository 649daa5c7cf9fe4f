"""What the registry remembers about failures: loads that failed (retried after a doubling backoff)
and engine threads that died (restarted after a backoff, until too many die within a window; then
the model is unavailable for the window and loads afresh on a request after it)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecoveryPolicy:
    """`max_restarts` engine restarts per model within `restart_window_s` seconds, the first after
    `restart_backoff_s` (doubling); a failed load is retried after `load_retry_s` (doubling, at most
    `load_retry_max_s`)."""

    max_restarts: int = 3
    restart_window_s: float = 300.0
    restart_backoff_s: float = 0.5
    load_retry_s: float = 5.0
    load_retry_max_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        for name in ("restart_window_s", "restart_backoff_s", "load_retry_s", "load_retry_max_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds")


@dataclass(frozen=True)
class Failure:
    """Why a model cannot be served now, and when (`time.monotonic()`) a request may try again."""

    message: str
    attempts: int
    retry_at: float
    kind: str = "load_failed"  # or "engine_failed": too many engine restarts

    def retry_in(self, now: float | None = None) -> float:
        return max(0.0, self.retry_at - (time.monotonic() if now is None else now))

    def describe(self, now: float | None = None) -> str:
        """The message and when the next try is: what a client's 503 says."""
        wait = self.retry_in(now)
        at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + wait))
        return f"{self.message}; retried on a request after {at} (in {wait:.0f} s)"


class Recovery:
    """Per model: the current `Failure`, the times its engine died, how often it was restarted."""

    def __init__(self, policy: RecoveryPolicy | None = None) -> None:
        self.policy = policy or RecoveryPolicy()
        self._lock = threading.Lock()
        self._failures: dict[str, Failure] = {}
        self._deaths: dict[str, deque[float]] = {}
        self._restarts: dict[str, int] = {}
        self._restarting: set[str] = set()

    def failure(self, model_id: str) -> Failure | None:
        with self._lock:
            return self._failures.get(model_id)

    def load_failed(self, model_id: str, message: str) -> Failure:
        """Record a failed load; the next is allowed after the doubled backoff."""
        p = self.policy
        with self._lock:
            before = self._failures.get(model_id)
            attempts = 1 if before is None else before.attempts + 1
            wait = min(p.load_retry_max_s, p.load_retry_s * 2 ** (attempts - 1))
            failure = Failure(message, attempts, time.monotonic() + wait)
            self._failures[model_id] = failure
            return failure

    def loaded(self, model_id: str) -> None:
        with self._lock:
            self._failures.pop(model_id, None)

    def died(self, model_id: str, reason: str) -> float | None:
        """An engine thread died: the delay before restarting it, or None when it died too often
        (the model is then marked unavailable for the window)."""
        p = self.policy
        now = time.monotonic()
        with self._lock:
            deaths = self._deaths.setdefault(model_id, deque())
            while deaths and now - deaths[0] > p.restart_window_s:
                deaths.popleft()
            deaths.append(now)
            if len(deaths) > p.max_restarts:
                message = (
                    f"its engine failed {len(deaths)} times within {p.restart_window_s:g} s "
                    f"(at most {p.max_restarts} restarts); last: {reason}"
                )
                self._failures[model_id] = Failure(message, 0, now + p.restart_window_s, "engine_failed")
                self._restarting.discard(model_id)
                deaths.clear()
                return None
            self._restarting.add(model_id)
            return p.restart_backoff_s * 2 ** (len(deaths) - 1)

    def restarted(self, model_id: str, ok: bool) -> None:
        with self._lock:
            self._restarting.discard(model_id)
            if ok:
                self._restarts[model_id] = self._restarts.get(model_id, 0) + 1

    def restarts(self, model_id: str) -> int:
        with self._lock:
            return self._restarts.get(model_id, 0)

    def state(self, model_id: str) -> dict[str, Any]:
        """For /health: `restarting`, `unavailable` (with why and when it is retried) or `ok`, and
        the engine restarts so far."""
        with self._lock:
            failure = self._failures.get(model_id)
            restarting = model_id in self._restarting
            out: dict[str, Any] = {"restarts": self._restarts.get(model_id, 0)}
        if restarting:
            return {"state": "restarting", **out}
        if failure is not None:
            wait = round(failure.retry_in(), 1)
            return {"state": "unavailable", "reason": failure.message, "retry_in_s": wait, **out}
        return {"state": "ok", **out}

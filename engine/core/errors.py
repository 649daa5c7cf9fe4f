"""What a generation or embedding engine raises to a caller, and the error code of requests it failed."""

from __future__ import annotations


class QueueFullError(RuntimeError):
    """The model's wait queue is full; the caller should retry later."""


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served (until `Engine.restart`)."""


ENGINE_FAILED = "engine_failed"  # `Delta.error_code` of the requests in flight when the thread died

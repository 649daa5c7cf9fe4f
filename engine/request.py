"""Typed messages between the server and the engine: what a request asks for, what comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; applied per sequence even inside a shared batch."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # besides the model's own eos ids
    ignore_eos: bool = False
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


class Status(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(frozen=True)
class Delta:
    """One engine step's output for one request, handed to the server's asyncio queue.

    `text` is already safe to show: complete UTF-8 characters, with any text that could
    still become a stop string held back. The last delta of a request has `finish_reason`
    set (and `error` when the engine failed it).
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    stop_text: str | None = None  # the stop string that ended the output, if any
    error: str | None = None


@dataclass
class EngineStats:
    """Counters read by tests and /metrics; `running` and `waiting` are gauges."""

    running: int = 0
    waiting: int = 0
    submitted: int = 0
    finished: int = 0
    aborted: int = 0
    failed: int = 0
    freed_slots: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)

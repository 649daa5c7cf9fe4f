"""Typed messages between the server and the engine: what a request asks for, what comes back."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.sampling.grammar import GrammarSpec

# Temperatures below this are greedy (dividing logits by them would overflow float32).
GREEDY_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings; applied per sequence even inside a shared batch.

    Order of application (engine.sampler): logit_bias, repetition penalty, frequency and
    presence penalties, the grammar's mask, temperature, then top-k, min-p and top-p
    filtering. Greedy rows take the argmax after the bias, penalties and mask. Logprobs are
    read after temperature and before the filters (greedy rows at temperature 1).
    """

    temperature: float = 1.0  # below GREEDY_EPS means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 means off
    min_p: float = 0.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()  # besides the model's own eos ids
    ignore_eos: bool = False
    seed: int | None = None
    frequency_penalty: float = 0.0  # OpenAI: minus penalty * count, over generated tokens
    presence_penalty: float = 0.0  # OpenAI: minus penalty once a token was generated
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt and generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with logprobs
    grammar: GrammarSpec | None = None  # constrained decoding: the output must match it

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS or self.top_k == 1

    @property
    def penalized(self) -> bool:
        """Whether this row needs its token counts (the penalties are not no-ops)."""
        return self.frequency_penalty != 0 or self.presence_penalty != 0 or self.repetition_penalty != 1

    @property
    def plain_greedy(self) -> bool:
        """The argmax of the model's own logits: greedy, with no bias, penalty, grammar or logprobs."""
        plain = not (self.logit_bias or self.penalized or self.logprobs or self.grammar is not None)
        return plain and self.greedy


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
class Logprob:
    """One token with its log probability; `top` holds the most likely alternatives, best first."""

    token_id: int
    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """One engine step's output for one request, handed to the server's asyncio queue.

    `text` is already safe to show: complete UTF-8 characters, with any text that could
    still become a stop string held back. The last delta of a request has `finish_reason`
    set (and `error` when the engine failed it). `index` is the choice (0..n-1) of a request
    for n sequences; `logprobs` has one entry per token of `token_ids` when asked for.
    """

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    stop_text: str | None = None  # the stop string that ended the output, if any
    error: str | None = None
    index: int = 0
    logprobs: tuple[Logprob, ...] = ()
    error_code: str | None = None  # with `error`: `engine_failed` when the engine thread died


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
    kv_blocks_used: int = 0  # gauge: KV blocks held by running sequences (engine.core.blocks)
    kv_blocks_total: int = 0  # gauge: the cache's blocks (kv_cache_tokens / block size)
    prefix_hit_tokens: int = 0  # prompt tokens admitted from the prefix cache
    prefix_miss_tokens: int = 0  # prompt tokens that had to be computed
    preemptions: int = 0  # sequences preempted (recomputed later) when the KV cache ran out

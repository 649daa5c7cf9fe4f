"""One request's state inside the engine: its tokens, its KV blocks, how far its KV cache reaches."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from llguidance import LLMatcher

from engine.core.request import Delta, SamplingParams, Status

_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: spreads sibling seeds apart


def sibling_seed(seed: int, index: int) -> int:
    """The seed of choice `index`: the request's own for choice 0, a distinct one for the others."""
    return seed if index == 0 else (seed + index * _GOLDEN) % 2**64


class Sequence:
    """A request being served. The engine thread alone mutates it.

    `token_ids` holds the prompt followed by every generated token; `num_computed` counts
    the leading tokens whose keys and values are in the cache, in the blocks of `block_table`
    (engine.core.blocks); `row` is the sequence's row in per-sequence state (the sampler's
    penalty counts) while it runs, and `fresh_row` says that row still holds an older
    sequence's. A step feeds `token_ids[num_computed : num_computed + n]`; when that reaches
    the end of `token_ids` the step's logits for the last token produce the next token.

    A request for n choices is n sequences: `index` is the choice, and siblings (index > 0)
    name the first one as `parent`, whose prompt KV they share instead of computing (see
    `engine.core.scheduler`). A preempted sequence (its blocks taken back when the cache ran
    out) waits again with its generated tokens kept, and recomputes them when readmitted.
    A seeded sibling draws from its own stream derived from the seed.
    """

    def __init__(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        emit: Callable[[Delta], None],
        index: int = 0,
        parent: Sequence | None = None,
    ) -> None:
        self.request_id = request_id
        self.token_ids = list(prompt_ids)
        self.num_prompt = len(prompt_ids)
        self.params = params
        self.emit = emit
        self.index = index
        self.parent = parent
        self.status = Status.WAITING
        self.row: int | None = None
        self.fresh_row = False
        self.block_table: list[int] = []
        self.num_registered = 0  # leading blocks of block_table in the prefix cache
        self.window_table: list[int] = []  # sliding-window layers' blocks (engine.core.window)
        self.window_registered = 0
        self.block_keys: list[int] = []  # prefix-cache keys of its leading full blocks (blocks.prefix_keys)
        self.num_computed = 0
        self.cached_tokens = 0
        self.preemptions = 0
        self.arrival = time.monotonic()
        self.first_token_at: float | None = None
        self.generator: torch.Generator | None = None
        self.matcher: LLMatcher | None = None  # made by the sampler when params.grammar is set
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(sibling_seed(params.seed, index))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_completion(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def remaining(self) -> int:
        """Tokens not yet in the cache; 1 means the sequence is decoding."""
        return len(self.token_ids) - self.num_computed

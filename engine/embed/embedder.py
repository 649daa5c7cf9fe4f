"""An embedding model served: tokenize, check, batch (see `engine.embed.batcher`), pool, normalize.

`await embedder.embed(["a sentence", [101, 2023, 102]])` returns the vectors (one row per input,
float32) and each input's token count. Strings are tokenized with the model's special tokens (as
sentence-transformers does); token ids are used as given (`/tokenize` gives the same ids a string
becomes). The registry loads one per `task: embed` catalog entry (`ModelRegistry.aget_embedder`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from engine.catalog.config import ModelConfig
from engine.core.request import EngineStats
from engine.embed.batcher import Batcher
from engine.embed.pooling import Pooling, read_pooling
from engine.model.loader import pick_device, pick_dtype, weights_folder
from engine.model.threads import one_thread

log = logging.getLogger("hearth.embed")

MAX_INPUTS = 2048  # per request, as OpenAI's embeddings API


class EmbedInputError(ValueError):
    """One input cannot be embedded; `index` says which (the API names it `input[index]`), None when
    it is the request's inputs as a whole, or its `truncate` (`field`)."""

    def __init__(
        self, index: int | None, message: str, code: str = "invalid_value", field: str = "input"
    ) -> None:
        super().__init__(message)
        self.index = index
        self.code = code
        self.field = field  # input | truncate


@dataclass(frozen=True)
class Embeddings:
    """The vectors of one request ([inputs, dimensions], float32, on the CPU) and each input's tokens."""

    vectors: torch.Tensor
    token_counts: tuple[int, ...]

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)

    def __iter__(self) -> Any:  # `vectors, counts = await embedder.embed(...)`
        return iter((self.vectors, self.token_counts))


class Embedder:
    """One embedding model on its device, its tokenizer and pooling, and the batcher that runs it.

    Duck-typed like `Engine` where the registry and the server's health, stats and metrics read a
    served model: `config`, `model`, `tokenizer`, `stats`, `alive`, `dead_reason`, `start`, `shutdown`.
    """

    def __init__(self, model: Any, tokenizer: Any, config: ModelConfig, pooling: Pooling) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.pooling = pooling
        self.device: torch.device = next(model.parameters()).device
        self.dtype: torch.dtype = next(model.parameters()).dtype
        positions = getattr(model.config, "max_position_embeddings", None)
        limits = [config.max_context, pooling.max_seq_length, positions]
        self.max_context = min(n for n in limits if isinstance(n, int) and n > 0)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.batcher = Batcher(
            config.id,
            self._forward,
            device=self.device,
            pad_id=int(pad) if pad is not None else 0,
            max_batch=config.max_batch_size,
            max_waiting=config.max_waiting,
            position_limit=positions if isinstance(positions, int) and positions > 0 else 1 << 30,
            threads=config.threads,
        )

    @property
    def dimensions(self) -> int:
        """Length of the vectors: the model's hidden size."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    @property
    def alive(self) -> bool:
        return self.batcher.alive

    @property
    def dead_reason(self) -> str | None:
        return self.batcher.dead_reason

    @property
    def stats(self) -> EngineStats:
        return self.batcher.stats

    def start(self) -> None:
        self.batcher.start()

    def shutdown(self) -> None:
        self.batcher.shutdown()

    def tokenize(self, text: str, truncate: int | None = None) -> list[int]:
        """`text`'s ids with the model's special tokens; at most `truncate` tokens (keeping the
        first ones and the special tokens, as sentence-transformers truncates) when given."""
        if self.pooling.lowercase:
            text = text.lower()
        if truncate is None:
            return [int(t) for t in self.tokenizer(text)["input_ids"]]
        encoded = self.tokenizer(text, truncation=True, max_length=truncate)
        return [int(t) for t in encoded["input_ids"]]

    def prepare(self, inputs: Sequence[str | Sequence[int]], truncate: int | None = None) -> list[list[int]]:
        """Each input as the ids the model reads; raises `EmbedInputError` naming the input that is
        empty, has ids outside the vocabulary, or is longer than `max_context` tokens (unless
        `truncate`, at most `max_context`, cuts it)."""
        if not inputs:
            raise EmbedInputError(None, "input must not be empty")
        if len(inputs) > MAX_INPUTS:
            raise EmbedInputError(None, f"input has {len(inputs)} items; at most {MAX_INPUTS} are accepted")
        if truncate is not None and not 1 <= truncate <= self.max_context:
            message = f"truncate must be between 1 and {self.max_context} tokens"
            raise EmbedInputError(None, message, field="truncate")
        prepared = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                ids = self.tokenize(item, truncate)
            else:
                ids = [int(t) for t in item]
                if any(not 0 <= t < self.vocab_size for t in ids):
                    raise EmbedInputError(index, f"token ids must be between 0 and {self.vocab_size - 1}")
                if truncate is not None:
                    ids = ids[:truncate]
            if not ids:
                raise EmbedInputError(index, "the input is empty (it has no tokens)")
            if len(ids) > self.max_context:
                raise EmbedInputError(
                    index,
                    f"This model's maximum context length is {self.max_context} tokens, however input "
                    f"{index} has {len(ids)} tokens. Shorten it, or ask for truncation.",
                    code="context_length_exceeded",
                )
            prepared.append(ids)
        return prepared

    async def embed(
        self, inputs: Sequence[str | Sequence[int]], *, truncate: int | None = None
    ) -> Embeddings:
        """The vectors of `inputs` (strings or token id lists, mixed as you like). Raises
        `EmbedInputError` (see `prepare`), `QueueFullError`, or `EngineDeadError`."""
        ids = await asyncio.to_thread(self.prepare, inputs, truncate)
        return await self.embed_ids(ids)

    async def embed_ids(self, ids: list[list[int]]) -> Embeddings:
        """The vectors of inputs already `prepare`d."""
        vectors = await self.batcher.submit(ids)
        return Embeddings(vectors, tuple(len(x) for x in ids))

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.pooling(hidden, mask)


def shorten(vectors: torch.Tensor, dimensions: int, normalize: bool) -> torch.Tensor:
    """The first `dimensions` of each vector (a Matryoshka model's smaller embedding), renormalized
    when the model's vectors are normalized."""
    cut = vectors[:, :dimensions]
    return torch.nn.functional.normalize(cut, p=2, dim=1) if normalize else cut


def load_embedder(cfg: ModelConfig, cache_dir: Path) -> Embedder:
    """Load `cfg`'s embedding model (a sentence-transformers or plain Hugging Face folder, or a
    causal LM whose base model's hidden states are pooled), offline, in eval mode, not yet started.

    `dtype: auto` is float32 on a CPU (vectors equal to sentence-transformers'), as `pick_dtype`
    says on an accelerator.
    """
    start = time.perf_counter()
    device = pick_device(cfg.device)
    dtype = torch.float32 if cfg.dtype == "auto" and device.type == "cpu" else pick_dtype(cfg.dtype, device)
    with one_thread():
        folder = weights_folder(cfg, cache_dir)
        pooling = read_pooling(folder, cfg)
        log.info("loading embedding model %s from %s", cfg.id, folder)
        model = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    embedder = Embedder(model, tokenizer, cfg, pooling)
    log.info(
        "loaded embedding model %s in %.1f s (%s, %s, %s pooling%s, %d dimensions, %d tokens)",
        cfg.id,
        time.perf_counter() - start,
        device,
        str(dtype).removeprefix("torch."),
        pooling.mode,
        ", normalized" if pooling.normalize else "",
        embedder.dimensions,
        embedder.max_context,
    )
    return embedder

"""Constrained decoding: a grammar per request, a token mask per step, through llguidance.

Why llguidance: a Rust library with no Python dependencies beyond itself, that computes a
token mask in tens of microseconds on the CPU (an Earley parser over a lexer, with the
tokenizer's trie), takes JSON Schema, Lark and regular expressions, and is the grammar
engine behind vLLM's and SGLang's `guidance` backends and llama.cpp's. xgrammar needs
triton and a compiled grammar cache per schema; outlines-core builds a full automaton per
schema up front (seconds for big schemas); lm-format-enforcer is pure Python per token.

A `GrammarSpec` travels in `SamplingParams`; the engine thread makes one `LLMatcher` per
sequence on its first sampled token, masks that row's logits before sampling and feeds the
chosen token back. Rows without a grammar are never touched, so they pay nothing but the
(shared) step time of the masks of the others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import llguidance.hf
import numpy as np
import torch
from llguidance import LLMatcher

from engine.sampling.json_bounds import bounded_schema

GrammarKind = Literal["json_schema", "json_object", "lark"]

_LOG_LEVEL = 0  # llguidance logs nothing to stderr; errors come back through get_error()

# JSON on one line with the usual spacing: `{"a": 1, "b": [2, 3]}`. Small models write that
# naturally; with free whitespace they may wander into endless runs of blanks. A schema can
# override it with its own "x-guidance" options (llguidance applies defaults first).
JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A grammar that cannot be compiled, or a matcher that reached an error state."""


@dataclass(frozen=True)
class GrammarSpec:
    """What the output must match: a JSON Schema (as JSON text), any JSON object, or Lark text."""

    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool) -> GrammarSpec:
        return cls("json_schema", json.dumps(schema, sort_keys=True))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @classmethod
    def lark(cls, text: str) -> GrammarSpec:
        return cls("lark", text)

    def compile(self) -> str:
        """The llguidance grammar text for this spec; JSON bounded so that it ends (`json_bounds`)."""
        if self.kind == "json_object":
            schema = bounded_schema({"type": "object"})
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)  # type: ignore[arg-type]
        if self.kind == "json_schema":
            schema = bounded_schema(json.loads(self.source))
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)  # type: ignore[arg-type]
        return LLMatcher.grammar_from_lark(self.source)


class GrammarCompiler:
    """One per engine: the model's tokenizer as llguidance sees it (built once, ~1 s), and
    matchers made from it. Thread-safe; `check` may be called from the server's thread."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._hf = tokenizer
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._llt: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._llt is None:
                eos = self._eos or None
                self._llt = llguidance.hf.from_tokenizer(self._hf, n_vocab=self.vocab_size, eos_token=eos)
            return self._llt

    def check(self, spec: GrammarSpec) -> str | None:
        """None when the grammar compiles for this tokenizer, else the reason it does not."""
        try:
            failed, messages = LLMatcher.validate_grammar_with_warnings(spec.compile(), self.tokenizer)
        except (ValueError, TypeError, RuntimeError) as exc:
            return str(exc)
        return ("; ".join(messages) or "invalid grammar") if failed else None

    def matcher(self, spec: GrammarSpec) -> LLMatcher:
        matcher = LLMatcher(self.tokenizer, spec.compile(), log_level=_LOG_LEVEL)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return matcher


class GrammarMasks:
    """Masks the rows of a step's logits that have matchers, and advances those matchers."""

    def __init__(self, vocab_size: int) -> None:
        self.words = (vocab_size + 31) // 32
        self._executor = llguidance.LLExecutor()
        self._bits = torch.empty(0, self.words, dtype=torch.int32)

    def apply(self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[LLMatcher]) -> torch.Tensor:
        """logits [B, V], changed in place: the listed rows get -inf wherever their grammar forbids
        the token."""
        for m in matchers:
            if m.is_error():
                raise GrammarError(f"grammar matcher failed: {m.get_error()}")
        k = len(rows)
        if self._bits.shape[0] < k:
            self._bits = torch.empty(k, self.words, dtype=torch.int32)
        bits = self._bits[:k]
        if k == 1:
            v = bits[0]
            matchers[0].unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * 4)
        else:
            self._executor.unsafe_compute_mask_ptr(
                [(m, i) for i, m in enumerate(matchers)], bits.data_ptr(), self.words * 4, k
            )
        for m in matchers:
            if m.is_error():
                raise GrammarError(f"grammar matcher failed: {m.get_error()}")
        forbidden = ~_unpack(bits, logits.shape[-1]).to(logits.device)  # [k, V] bool
        for j, row in enumerate(rows):  # in place: masking twice (a per-row retry) changes nothing
            logits[row].masked_fill_(forbidden[j], float("-inf"))
        return logits

    @staticmethod
    def advance(matchers: Sequence[LLMatcher], tokens: Sequence[int]) -> list[bool]:
        """Feed each matcher its row's chosen token; False where the matcher rejected it."""
        return [m.consume_token(t) for m, t in zip(matchers, tokens, strict=True)]


def _unpack(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 bitmask [k, W] (bit j of word w = token 32w + j) -> bool [k, vocab]."""
    as_bytes = bits.numpy().view(np.uint8)  # little-endian words: byte order = token order
    flags = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :vocab]
    return torch.from_numpy(flags.astype(np.bool_))

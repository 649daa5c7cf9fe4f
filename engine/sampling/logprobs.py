"""Token ids as the text and UTF-8 bytes that logprobs report, one token at a time.

A token alone is often not valid text: a byte-level BPE token can hold half of a multi-byte
character (it decodes to U+FFFD), and a SentencePiece token decoded alone loses its leading
space. So the bytes come from the tokenizer's own pieces where it has a byte mapping (byte-level
BPE: GPT-2's byte-to-unicode table; SentencePiece byte-fallback pieces like `<0x0A>`), and from
the decoded text otherwise.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from engine.core.request import Logprob

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of GPT-2's `bytes_to_unicode`: each printable stand-in character -> its byte."""
    ranges = ((ord("!"), ord("~")), (ord("¡"), ord("¬")), (ord("®"), ord("ÿ")))
    printable = [b for lo, hi in ranges for b in range(lo, hi + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer's pieces are byte-level BPE (the `tokenizers` ByteLevel decoder)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return "ByteLevel" in repr(getattr(backend, "decoder", None))


class TokenTexts:
    """Memoized `token id -> (text, bytes)` for one tokenizer, and `Logprob` entries built from it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_level = is_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, tuple[int, ...]]] = {}

    def get(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._compute(token_id)
        return found

    def entry(self, token_id: int, logprob: float, top: list[tuple[int, float]]) -> Logprob:
        """The logprob entry of a chosen token and its alternatives (id, logprob), best first."""
        alternatives = tuple(self._plain(i, lp) for i, lp in top)
        text, raw = self.get(token_id)
        return Logprob(token_id=token_id, token=text, bytes=raw, logprob=logprob, top=alternatives)

    def _plain(self, token_id: int, logprob: float) -> Logprob:
        text, raw = self.get(token_id)
        return Logprob(token_id=token_id, token=text, bytes=raw, logprob=logprob)

    def _compute(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        text: str = self.tokenizer.decode(
            [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece:
            if self.byte_level:
                table = unicode_to_bytes()
                if all(c in table for c in piece):
                    return text, tuple(table[c] for c in piece)
            else:
                match = _BYTE_PIECE.fullmatch(piece)
                if match:
                    return text, (int(match.group(1), 16),)
                if piece.startswith(_SPIECE_SPACE):
                    text = piece.replace(_SPIECE_SPACE, " ")
        return text, tuple(text.encode("utf-8"))

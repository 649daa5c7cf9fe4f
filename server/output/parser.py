"""Splits a model's output, as it streams, into text, reasoning (`<think>…</think>`) and tool calls.

The same parser serves streamed and whole answers (a whole answer is one `feed` then `finish`),
so both always agree. Text that could still be the start of a tag is held back until it is
decided; reasoning is emitted as it comes (its leading and trailing whitespace trimmed); a
`<tool_call>…</tool_call>` is held whole and becomes a call when its JSON names a declared tool,
text otherwise. With tools declared, an answer whose first character is `{` is held to the end
and becomes a call when it is one bare JSON call (see `server.output.tool_parser`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from server.output.tool_parser import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ParsedCall, parse_call

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

PieceKind = Literal["text", "thinking", "tool"]
Mode = Literal["text", "thinking", "tool_tag", "json"]


@dataclass(frozen=True)
class Piece:
    """A run of text or reasoning (never empty), or one whole tool call."""

    kind: PieceKind
    text: str = ""
    call: ParsedCall | None = None


class OutputParser:
    """`tool_names`: the declared tools (none: no calls are looked for). `thinking`: the output starts
    inside a reasoning part (the prompt ended by opening `<think>`)."""

    def __init__(self, tool_names: Collection[str] = (), thinking: bool = False) -> None:
        self._names = frozenset(tool_names)
        self._tags = (THINK_OPEN, TOOL_CALL_OPEN) if self._names else (THINK_OPEN,)
        self._mode: Mode = "thinking" if thinking else "text"
        self._buf = ""
        self._answer_start = True  # the next text starts an answer (where a bare JSON call may be)
        self._skip_space = thinking  # drop whitespace before the next text (after a tag)
        self._steps = {
            "text": self._text,
            "thinking": self._thinking,
            "tool_tag": self._tool_tag,
            "json": self._json,
        }

    def feed(self, text: str) -> list[Piece]:
        """The pieces decided once `text` is added to the output."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> list[Piece]:
        """The rest, at the end of the output (an unclosed reasoning or call included)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[Piece]:
        out: list[Piece] = []
        while True:
            if self._skip_space:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return out
                self._skip_space = False
            if not self._steps[self._mode](out, final):
                return out

    def _text(self, out: list[Piece], final: bool) -> bool:
        if self._answer_start and self._names:
            stripped = self._buf.lstrip()
            if not stripped and not final:
                return False
            if stripped.startswith("{"):
                self._mode = "json"
                return True
        if self._buf:
            self._answer_start = False
        found = [(i, tag) for tag in self._tags if (i := self._buf.find(tag)) >= 0]
        if found:
            i, tag = min(found)
            _add(out, "text", self._buf[:i])
            self._buf = self._buf[i + len(tag) :]
            self._mode = "thinking" if tag == THINK_OPEN else "tool_tag"
            self._skip_space = tag == THINK_OPEN
            return True
        held = 0 if final else max(_partial_len(self._buf, tag) for tag in self._tags)
        _add(out, "text", self._buf[: len(self._buf) - held])
        self._buf = self._buf[len(self._buf) - held :]
        return False

    def _thinking(self, out: list[Piece], final: bool) -> bool:
        i = self._buf.find(THINK_CLOSE)
        if i >= 0:
            _add(out, "thinking", self._buf[:i].rstrip())
            self._buf = self._buf[i + len(THINK_CLOSE) :]
            self._mode, self._answer_start, self._skip_space = "text", True, True
            return True
        if final:
            _add(out, "thinking", self._buf.rstrip())
            self._buf = ""
            return False
        # Hold a possible start of the closing tag and the whitespace before it (trimmed if it closes).
        keep = len(self._buf[: len(self._buf) - _partial_len(self._buf, THINK_CLOSE)].rstrip())
        _add(out, "thinking", self._buf[:keep])
        self._buf = self._buf[keep:]
        return False

    def _tool_tag(self, out: list[Piece], final: bool) -> bool:
        i = self._buf.find(TOOL_CALL_CLOSE)
        if i < 0 and not final:
            return False
        body = self._buf[:i] if i >= 0 else self._buf
        self._buf = self._buf[i + len(TOOL_CALL_CLOSE) :] if i >= 0 else ""
        self._mode = "text"
        call = parse_call(body, self._names)
        if call is None:
            _add(out, "text", TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if i >= 0 else ""))
        else:
            out.append(Piece("tool", call=call))
            self._skip_space = True
        return bool(self._buf)

    def _json(self, out: list[Piece], final: bool) -> bool:
        if not final:
            return False
        call = parse_call(self._buf, self._names)
        if call is None:
            _add(out, "text", self._buf)
        else:
            out.append(Piece("tool", call=call))
        self._buf = ""
        return False


def parse_output(text: str, tool_names: Collection[str] = (), thinking: bool = False) -> list[Piece]:
    """A whole output's pieces, adjacent runs of the same kind merged (see `OutputParser`)."""
    parser = OutputParser(tool_names, thinking)
    merged: list[Piece] = []
    for piece in [*parser.feed(text), *parser.finish()]:
        if merged and piece.kind != "tool" and merged[-1].kind == piece.kind:
            merged[-1] = Piece(piece.kind, merged[-1].text + piece.text)
        else:
            merged.append(piece)
    return merged


def _add(out: list[Piece], kind: PieceKind, text: str) -> None:
    if text:
        out.append(Piece(kind, text))


def _partial_len(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (without being all of it)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0

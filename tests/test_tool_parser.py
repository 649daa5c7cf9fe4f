"""Tool calls and reasoning found in model output, whole and streamed a character at a time."""

from __future__ import annotations

import pytest

from server.output.parser import OutputParser, Piece, parse_output
from server.output.tool_parser import ParsedCall, parse_call, render_call

NAMES = {"get_weather"}
CALL = ParsedCall("get_weather", {"city": "Paris"})


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_weather", "input": {"city": "Paris"}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}',
        '  \n{"name": "get_weather", "arguments": {"city": "Paris"}}\n',
    ],
)
def test_parse_call_forms(text: str) -> None:
    assert parse_call(text, NAMES) == CALL


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "other_tool", "arguments": {}}',  # not declared
        '{"name": "get_weather", "arguments": [1]}',
        '{"name": "get_weather", "arguments": "not json"}',
        '{"arguments": {"city": "Paris"}}',
        '["get_weather"]',
        '{"name": "get_weather", "arguments": {"city": "Par',
        "Paris",
    ],
)
def test_parse_call_rejects(text: str) -> None:
    assert parse_call(text, NAMES) is None


def test_parse_call_without_arguments() -> None:
    assert parse_call('{"name": "get_weather"}', NAMES) == ParsedCall("get_weather", {})


def test_render_call_reads_back() -> None:
    assert parse_output(render_call(CALL), NAMES) == [Piece("tool", call=CALL)]


TAGGED = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize(
    ("text", "names", "pieces"),
    [
        ("The capital is Paris.", NAMES, [Piece("text", "The capital is Paris.")]),
        (TAGGED, NAMES, [Piece("text", "Let me check.\n"), Piece("tool", call=CALL)]),
        (TAGGED, set(), [Piece("text", TAGGED)]),  # no tools declared: text
        (f"{TAGGED}\n{TAGGED}", NAMES, [Piece("text", "Let me check.\n"), Piece("tool", call=CALL)] * 2),
        ('  {"name": "get_weather", "input": {"city": "Paris"}}', NAMES, [Piece("tool", call=CALL)]),
        ('{"name": "nope"}', NAMES, [Piece("text", '{"name": "nope"}')]),
        ('{"name": "get_weather"} and more', NAMES, [Piece("text", '{"name": "get_weather"} and more')]),
        ("<tool_call>{oops}</tool_call> then", NAMES, [Piece("text", "<tool_call>{oops}</tool_call> then")]),
        (
            "<think>\nSimple.\n</think>\n\nParis.",
            set(),
            [Piece("thinking", "Simple."), Piece("text", "Paris.")],
        ),
        (
            '<think>Use the tool.</think>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
            NAMES,
            [Piece("thinking", "Use the tool."), Piece("tool", call=CALL)],
        ),
        ("<think>never closed", set(), [Piece("thinking", "never closed")]),
        ("a < b and c <thin", NAMES, [Piece("text", "a < b and c <thin")]),
        ("", NAMES, []),
        ("  ", NAMES, [Piece("text", "  ")]),
    ],
)
def test_parse_output(text: str, names: set[str], pieces: list[Piece]) -> None:
    assert parse_output(text, names) == pieces
    assert _streamed(text, names) == pieces


def _streamed(text: str, names: set[str]) -> list[Piece]:
    """The pieces of `text` fed one character at a time, merged as `parse_output` merges them."""
    parser = OutputParser(names)
    pieces = [piece for ch in text for piece in parser.feed(ch)] + parser.finish()
    merged: list[Piece] = []
    for piece in pieces:
        assert piece.kind == "tool" or piece.text
        if merged and piece.kind != "tool" and merged[-1].kind == piece.kind:
            merged[-1] = Piece(piece.kind, merged[-1].text + piece.text)
        else:
            merged.append(piece)
    return merged


def test_text_is_streamed_before_the_end() -> None:
    parser = OutputParser(NAMES)
    assert parser.feed("Hello") == [Piece("text", "Hello")]
    assert parser.feed(" wor<") == [Piece("text", " wor")]  # "<" may start a tag
    assert parser.feed("ld") == [Piece("text", "<ld")]
    assert parser.feed("<think>Hm") == [Piece("thinking", "Hm")]
    assert parser.feed("m  ") == [Piece("thinking", "m")]  # trailing space held until it is known
    assert parser.feed("ok</think> Done") == [Piece("thinking", "  ok"), Piece("text", "Done")]
    assert parser.finish() == []

"""Structured output that ends: the grammars of every surface hold integers to 64 bits, numbers to
+-1e15 with 10 decimals at most, and free-form JSON to a few levels of nesting, while what a
schema spells out (its own bounds, its own nesting) is kept. Checked with llguidance matchers on the
served model's tokenizer, token by token, as the engine runs them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import GrammarSpec, bounded_schema
from engine.sampling.grammar import GrammarCompiler
from engine.sampling.json_bounds import INT_BOUND
from server.output.tool_grammar import ToolSpec, answer_grammar

COUNT = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])


def accepts(compiler: GrammarCompiler, spec: GrammarSpec, text: str) -> bool:
    """Whether the grammar lets the model write `text` and then stop."""
    matcher = compiler.matcher(spec)
    ids = compiler.tokenizer.tokenize_str(text)
    return all(matcher.consume_token(t) for t in ids) and matcher.is_accepting()


def test_integers_are_held_to_64_bits(compiler: GrammarCompiler) -> None:
    spec = GrammarSpec.json_schema(COUNT)
    assert accepts(compiler, spec, f'{{"n": {INT_BOUND}}}')
    assert accepts(compiler, spec, f'{{"n": -{INT_BOUND}}}')
    assert not accepts(compiler, spec, '{"n": ' + "1" * 20 + "}")
    own = GrammarSpec.json_schema({"type": "integer", "minimum": 0, "maximum": 99})
    assert accepts(compiler, own, "99") and not accepts(compiler, own, "100")


def test_numbers_have_a_sane_length(compiler: GrammarCompiler) -> None:
    spec = GrammarSpec.json_schema({"type": "number"})
    for good in ("0", "-2", "3.25", "123456789012345", "-0.0123456789"):
        assert accepts(compiler, spec, good), good
    for bad in ("0.01234567891", "12345678901234567", "1e300"):
        assert not accepts(compiler, spec, bad), bad


def nested(depth: int) -> str:
    return "".join(f'{{"k{i}": ' for i in range(depth)) + "1" + "}" * depth


def test_free_form_json_nests_a_few_levels_only(compiler: GrammarCompiler) -> None:
    spec = GrammarSpec.json_object()
    assert accepts(compiler, spec, '{"a": [1, "x", null, true], "b": {"c": 2.5}}')
    assert accepts(compiler, spec, nested(4))
    assert not accepts(compiler, spec, nested(5))
    assert not accepts(compiler, spec, '{"a": ' + "9" * 30 + "}")


def test_a_schema_keeps_the_nesting_it_spells_out(compiler: GrammarCompiler) -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for i in reversed(range(6)):
        schema = {"type": "object", "properties": {f"k{i}": schema}, "required": [f"k{i}"]}
    schema["additionalProperties"] = False
    assert accepts(compiler, GrammarSpec.json_schema(schema), nested(6))


def test_forced_calls_are_bounded_too(compiler: GrammarCompiler) -> None:
    """The Lark grammars of forced calls (chat, Anthropic, Responses) inline bounded schemas."""
    spec = answer_grammar(None, [ToolSpec("count", COUNT)], parallel=False)
    assert spec is not None
    call = '<tool_call>\n{{"name": "count", "arguments": {{"n": {n}}}}}\n</tool_call>'
    assert accepts(compiler, spec, call.format(n=42))
    assert not accepts(compiler, spec, call.format(n="1" * 20))
    free = answer_grammar(None, [ToolSpec("anything")], parallel=False)
    assert free is not None
    anything = '<tool_call>\n{{"name": "anything", "arguments": {{"n": {n}}}}}\n</tool_call>'
    assert accepts(compiler, free, anything.format(n=nested(3)))
    assert not accepts(compiler, free, anything.format(n=nested(5)))


def test_the_rewrite_leaves_the_schema_it_was_given_alone() -> None:
    original = json.loads(json.dumps(COUNT))
    bounded = bounded_schema(original)
    assert original == COUNT
    assert bounded["properties"]["n"]["maximum"] == INT_BOUND and "$defs" in bounded
    assert bounded_schema(False) is False

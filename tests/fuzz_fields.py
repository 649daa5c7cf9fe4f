"""Hypothesis strategies for fuzzing the HTTP edge, field by field: each route's skeleton (a valid body) and,
per field, values it accepts and values it refuses (wrong types, out-of-range numbers, huge strings, deep
nesting, unicode, nulls). `tests/fuzz_cases.py` builds requests from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.launch import MODEL

VOCAB = 49152  # SmolLM2's vocabulary

# Raw JSON text where a value is drawn (numbers Python cannot dump, nesting json.dumps cannot reach):
# a marker string that `encode` replaces by the text it carries.
RAW_MARKER = re.compile(r'"\\u0000raw:((?:[^"\\]|\\.)*?)\\u0000"')


def raw(text: str) -> str:
    return f"\x00raw:{text}\x00"


def deep(depth: int, kind: str) -> str:
    return raw("[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth)


HUGE = "lorem ipsum dolor sit amet " * 2000  # ~54k characters, well over the 4096-token window
SPECIAL_TEXT = [
    "", " ", "\x00", "\ud800", "\udfff", "\u202e\u200b", "🦜" * 20, "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "{{ raise_exception('x') }}", "{% for m in messages %}", "\r\n\t", "a" * 300,
    "Ω≈ç√∫ 日本語 العربية", "\ufeff", "null", "0", "NaN", "</s>",
]  # fmt: skip
SHORT = st.text(max_size=12)
TEXT = st.one_of(SHORT, st.sampled_from(SPECIAL_TEXT))
INTS = st.one_of(st.integers(-3, 10), st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**30]))
FLOATS = st.one_of(st.floats(-5, 5), st.sampled_from([1e308, -1e308, 5e-324, -0.0, 0.1, float("nan")]))
RAW_NUMBERS = st.sampled_from(
    [raw("1e999"), raw("-1e999"), raw("1e-999"), raw("1" + "0" * 5000), raw("Infinity"), raw("-0")]
)
DEEP = st.builds(
    deep, st.sampled_from([5, 30, 62, 63, 64, 65, 200, 3000, 100_000]), st.sampled_from(["list", "dict"])
)
LEAF = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(
    LEAF, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(SHORT, kids, max_size=3), max_leaves=8
)
WILD = st.one_of(JSON, st.just(HUGE), DEEP, RAW_NUMBERS, st.text(min_size=1, max_size=40))
NOT_STR = st.one_of(INTS, st.booleans(), st.lists(st.integers(), max_size=2), st.just({"a": 1}))
NOT_INT = st.one_of(st.just("1"), st.just(1.5), st.booleans(), st.just([1]), st.just({}))
NOT_NUM = st.one_of(st.just("0.5"), st.booleans(), st.just([0.5]), st.just({}))
NOT_BOOL = st.one_of(st.just("yes"), st.just(1), st.just(0), st.just([True]), st.just({}))
NOT_DICT = st.one_of(st.just("x"), st.just(1), st.just([{}]), st.booleans())


def hi(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@dataclass(frozen=True)
class Spec:
    """One field: values that keep the request valid (and cheap), and values the server must refuse
    with `status`, naming the field (`param`, on the OpenAI routes)."""

    valid: st.SearchStrategy[Any] | None
    invalid: st.SearchStrategy[Any]
    status: int = 400


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False)


MODEL_SPEC = Spec(st.sampled_from([MODEL, "smollm2"]), st.builds("no-such-model-{}".format, SHORT), 404)
PARTS = st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=2)
CHAT_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": TEXT | PARTS},
    optional={"name": st.sampled_from(["bob", "x_1"])},
)
SAMPLING = {
    "temperature": Spec(
        _floats(0, 2) | st.sampled_from([5e-324, 1e-300, 1e-8]),
        st.one_of(st.sampled_from([-0.1, 2.01, 1e9]), NOT_NUM),
    ),
    "top_p": Spec(
        _floats(0.01, 1) | st.sampled_from([5e-324, 1e-300]),
        st.one_of(st.sampled_from([0, -1, 1.5]), NOT_NUM),
    ),
    "stop": Spec(
        st.text(min_size=1, max_size=8) | st.lists(st.text(min_size=1, max_size=8), max_size=4),
        st.sampled_from(["", [""], ["a", "b", "c", "d", "e"], 5, [1], {"a": "b"}]),
    ),
    "stream": Spec(st.booleans(), NOT_BOOL),
    "stream_options": Spec(
        st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        st.one_of(NOT_DICT, st.just({"include_usage": "yes"})),
    ),
    "n": Spec(st.integers(1, 3), st.one_of(st.sampled_from([0, -1, 9, 10**6]), NOT_INT)),
    "seed": Spec(
        st.integers(-(2**63), 2**64 - 1), st.one_of(st.sampled_from([2**64, -(2**63) - 1]), NOT_INT)
    ),
    "frequency_penalty": Spec(_floats(-2, 2), st.one_of(st.sampled_from([2.5, -3]), NOT_NUM)),
    "presence_penalty": Spec(_floats(-2, 2), st.one_of(st.sampled_from([2.5, -3]), NOT_NUM)),
    "logit_bias": Spec(
        st.dictionaries(st.integers(0, VOCAB - 1).map(str), _floats(-100, 100), max_size=3),
        st.sampled_from([{"abc": 1}, {"5": 101}, {"5": "x"}, [1], {"99999999": 1}, {"-1": 1}, "x"]),
    ),
    "top_k": Spec(
        st.integers(-1, 50) | st.sampled_from([2**31, 2**63 - 1, 10**30]), st.one_of(st.just(-2), NOT_INT)
    ),
    "min_p": Spec(_floats(0, 1), st.one_of(st.sampled_from([-0.1, 1.1]), NOT_NUM)),
    "repetition_penalty": Spec(
        _floats(0.5, 2) | st.sampled_from([5e-324, 1e-300, 1e300]),
        st.one_of(st.sampled_from([0, -1]), NOT_NUM),
    ),
    "ignore_eos": Spec(st.booleans(), NOT_BOOL),
    "user": Spec(TEXT, NOT_STR),
    "metadata": Spec(st.dictionaries(SHORT, SHORT, max_size=2), NOT_DICT),
    "timeout": Spec(st.sampled_from([60, 300.5]), st.sampled_from([0, -1, "5", True, [5], raw("1e999")])),
}
MAX_TOKENS = Spec(st.integers(1, 2), st.one_of(st.sampled_from([0, -1, 10**6]), NOT_INT))
CHAT = {
    "model": MODEL_SPEC,
    "max_tokens": MAX_TOKENS,
    "max_completion_tokens": MAX_TOKENS,
    "messages": Spec(
        st.lists(CHAT_MESSAGE, min_size=1, max_size=3),
        st.sampled_from([[], "hi", [1], [[]], hi() * 1025, [{"content": "hi"}], [{"role": "user"}]]),
    ),
    "messages.0.role": Spec(st.sampled_from(["user", "system"]), st.sampled_from(["wizard", "", 5, None])),
    "messages.0.content": Spec(
        TEXT | PARTS,
        st.sampled_from([5, {"a": 1}, True, None, [{"type": "image"}], [{"type": "text"}], [{"text": "x"}]]),
    ),
    "logprobs": Spec(st.booleans(), NOT_BOOL),
    "top_logprobs": Spec(None, st.sampled_from([21, -1, "5", 1.5])),
    "enable_search": Spec(st.just(False), st.sampled_from([True, "yes"])),
    **SAMPLING,
}
COMPLETIONS = {
    "model": MODEL_SPEC,
    "max_tokens": MAX_TOKENS,
    "prompt": Spec(
        TEXT
        | st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)
        | st.lists(TEXT, min_size=1, max_size=1),
        st.sampled_from([5, {"a": 1}, ["a", "b"], [-1], [10**9], [1.5], [True], [[1], [2]], None]),
    ),
    "echo": Spec(st.booleans(), NOT_BOOL),
    "logprobs": Spec(st.integers(0, 5), st.one_of(st.sampled_from([6, -1]), NOT_INT)),
    "suffix": Spec(st.sampled_from(["", None]), st.sampled_from(["x", 5])),
    "best_of": Spec(st.just(1), st.sampled_from([2, 0, "1"])),
    **SAMPLING,
}
TOOL = {
    "name": "get_weather",
    "description": "the weather",
    "input_schema": {"type": "object", "properties": {}},
}
BLOCKS = st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=1, max_size=2)
ANTHROPIC_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": TEXT | BLOCKS}
)
COUNT_TOKENS = {
    "model": MODEL_SPEC,
    "messages": Spec(
        st.lists(ANTHROPIC_MESSAGE, min_size=1, max_size=3),
        st.sampled_from([[], "hi", [1], [{"role": "system", "content": "x"}], [{"role": "user"}]]),
    ),
    "messages.0.role": Spec(st.just("user"), st.sampled_from(["system", "tool", 5, None])),
    "messages.0.content": Spec(
        TEXT | BLOCKS,
        st.sampled_from(
            [
                5,
                None,
                {"a": 1},
                [{"type": "image", "source": {"type": "base64", "data": "x"}}],
                [{"type": "text"}],
            ]
        ),
    ),
    "system": Spec(TEXT | BLOCKS, st.sampled_from([5, [{"type": "image"}], {"text": "x"}])),
    "tools": Spec(st.just([TOOL]), st.sampled_from([[{"name": "bad name!", "input_schema": {}}], "x", [{}]])),
    "tool_choice": Spec(
        st.just({"type": "none"}),
        st.sampled_from([{"type": "bogus"}, {"type": "tool", "name": "nope"}, "auto"]),
    ),
    "thinking": Spec(
        st.just({"type": "disabled"}),
        st.sampled_from([{"type": "enabled", "budget_tokens": 10}, {"type": "x"}]),
    ),
}
MESSAGES = {
    **COUNT_TOKENS,
    "max_tokens": Spec(st.integers(1, 2), st.one_of(st.sampled_from([0, -1, None]), NOT_INT)),
    "stop_sequences": Spec(
        st.lists(st.text(min_size=1, max_size=8), max_size=3), st.sampled_from([[""], "x", [1]])
    ),
    "temperature": Spec(
        _floats(0, 1) | st.sampled_from([5e-324, 1e-8]), st.one_of(st.sampled_from([1.5, -0.5]), NOT_NUM)
    ),
    "top_p": Spec(_floats(0.01, 1), st.one_of(st.sampled_from([0, 2]), NOT_NUM)),
    "top_k": Spec(st.integers(0, 50) | st.sampled_from([2**31, 10**30]), st.one_of(st.just(-1), NOT_INT)),
    "stream": Spec(st.booleans(), NOT_BOOL),
    "metadata": Spec(st.just({"user_id": "u-1"}), st.sampled_from([{"user_id": 5}, "x"])),
    "timeout": SAMPLING["timeout"],
}


@dataclass(frozen=True)
class Route:
    path: str
    skeleton: dict[str, Any]
    fields: dict[str, Spec]
    max_keys: tuple[str, ...]  # the fields bounding the completion; empty for count_tokens

    @property
    def anthropic(self) -> bool:
        return "messages" in self.path


ROUTES = [
    Route(
        "/v1/chat/completions",
        {"model": MODEL, "messages": hi(), "max_tokens": 1, "temperature": 0},
        CHAT,
        ("max_tokens", "max_completion_tokens"),
    ),
    Route(
        "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 1}, COMPLETIONS, ("max_tokens",)
    ),
    Route(
        "/anthropic/v1/messages",
        {"model": MODEL, "messages": hi(), "max_tokens": 1},
        MESSAGES,
        ("max_tokens",),
    ),
    Route("/v1/messages", {"model": MODEL, "messages": hi(), "max_tokens": 2}, MESSAGES, ("max_tokens",)),
    Route("/anthropic/v1/messages/count_tokens", {"model": MODEL, "messages": hi()}, COUNT_TOKENS, ()),
]
KNOWN = frozenset(k.split(".")[0] for r in ROUTES for k in r.fields) | {"timeout"}
EXTRA_KEYS = st.one_of(
    st.sampled_from(["tools", "response_format", "functions", "reasoning_effort", "__proto__", "", "MODEL"]),
    SHORT.filter(lambda k: k not in KNOWN),
)

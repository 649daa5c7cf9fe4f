"""Hypothesis strategies for fuzzing the HTTP edge: request bodies built from valid skeletons and mutated
(wrong types, out-of-range numbers, huge strings, deep nesting, unicode, nulls, extra keys), raw bytes
that are not a JSON object, and random paths and methods.

Generation stays cheap: `bounded` keeps every body that could validate at 1 or 2 new tokens, so a
fuzz run spends its time at the edge, not in the model.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.launch import MODEL

VOCAB = 49152  # SmolLM2's vocabulary

# Raw JSON text where a value is drawn (numbers Python cannot dump, nesting json.dumps cannot reach):
# a marker string that `encode` replaces by the text it carries.
_RAW = re.compile(r'"\\u0000raw:((?:[^"\\]|\\.)*?)\\u0000"')


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


@dataclass
class Case:
    """One request to send; `expect` is (status, param) when a single field was made invalid."""

    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, str] | None = None
    note: str = ""


def encode(body: Any, ascii: bool = True) -> bytes:
    """JSON text of `body` (NaN as `NaN`), raw markers replaced; lone surrogates kept as such."""
    text = _RAW.sub(lambda m: json.loads(f'"{m.group(1)}"'), json.dumps(body, ensure_ascii=ascii))
    return text.encode("utf-8", "surrogatepass")


def _split(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".")]


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every path to a value inside `value` (dict keys and list indices), the root excluded."""
    out: list[tuple[str | int, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(paths(child, (*prefix, key)))
    return out


def put(body: Any, path: tuple[str | int, ...] | list[str | int], value: Any) -> bool:
    """Set `value` at `path` (creating a missing last dict key); False when the path does not fit."""
    node = body
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return False
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        node[last] = value
    else:
        return False
    return True


def delete(body: Any, path: tuple[str | int, ...]) -> None:
    node = body
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def bounded(route: Route, body: Any) -> None:
    """Keep a body that may validate cheap: at most 2 new tokens, no deadline that could fire (a 504)."""
    if not isinstance(body, dict):
        return
    for key in route.max_keys:
        value = body.get(key)
        if type(value) is int and value > 2 and (route.anthropic or value < 4096):
            body[key] = 2
    if route.max_keys and not route.anthropic and all(body.get(k) is None for k in route.max_keys):
        body[route.max_keys[0]] = 1
    timeout = body.get("timeout")
    if type(timeout) in (int, float) and 0 < timeout < 30:
        body["timeout"] = 60


@st.composite
def body_cases(draw: st.DrawFn, route: Route) -> Case:
    """A skeleton with optional valid fields, then 0 to 3 mutations."""
    body = copy.deepcopy(route.skeleton)
    for name, spec in route.fields.items():
        optional = "." not in name and name not in route.max_keys and spec.valid is not None
        if optional and draw(st.integers(0, 9)) == 0:
            body[name] = copy.deepcopy(draw(spec.valid))
    mutations = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 0]))
    expect: tuple[int, str] | None = None
    notes = []
    for _ in range(mutations):
        op = draw(
            st.sampled_from(["invalid", "invalid", "invalid", "valid", "wild", "null", "delete", "extra"])
        )
        notes.append(op)
        if op in ("invalid", "valid"):
            name = draw(st.sampled_from(sorted(route.fields)))
            spec = route.fields[name]
            value = copy.deepcopy(draw(spec.invalid if op == "invalid" or spec.valid is None else spec.valid))
            if put(body, _split(name), value) and op == "invalid" and mutations == 1:
                expect = (spec.status, name)
            notes[-1] += f" {name}"
            continue
        targets = paths(body)
        if op == "extra":
            holders = [()] + [p for p in targets if isinstance(_get(body, p), dict)]
            where = draw(st.sampled_from(holders))
            put(body, (*where, draw(EXTRA_KEYS)), copy.deepcopy(draw(WILD)))
        elif targets:
            where = draw(st.sampled_from(targets))
            if op == "delete":
                delete(body, where)
            else:
                put(body, where, None if op == "null" else copy.deepcopy(draw(WILD)))
            notes[-1] += " " + ".".join(map(str, where))
    bounded(route, body)
    case = Case("POST", route.path, encode(body, draw(st.booleans())), expect=expect, note=", ".join(notes))
    case.headers["content-type"] = "application/json"
    if expect is None and draw(st.integers(0, 9)) == 0:
        case.headers["x-request-timeout"] = draw(
            st.sampled_from(["soon", "-1", "0", "inf", "nan", "", "300"])
        )
    return case


def _get(body: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        body = body[key]
    return body


def broken(good: bytes) -> list[bytes]:
    """Bodies that are no JSON object, some made from a valid one (`good`)."""
    return [
        b"", b"{", b"}", b"null", b"[]", b"1", b'"str"', b"NaN", b"true", b"{}",
        b'{"model": NaN}', b'{"a": Infinity}', b"\xff\xfe\xfd", b'{"model": "\xc3\x28"}',
        good + b"xx", good[:-1], b"\xef\xbb\xbf" + good, good.decode().encode("utf-16"),
        good.replace(b"{", b"{/*c*/", 1), b'{"model": "a", "model": "b"}',
        b'{"max_tokens": 1' + b"0" * 5000 + b"}", b"[" * 100_000, b"{" * 50 + b"}" * 50,
        b"\x00" * 16, b"{'model': 'x'}",
    ]  # fmt: skip


@st.composite
def raw_cases(draw: st.DrawFn, route: Route) -> Case:
    """Bodies that are not a JSON object (random bytes, a valid body cut short, JSON scalars and arrays),
    with odd content types; `broken` lists the named cases, sent one by one."""
    good = encode(route.skeleton)
    content = draw(
        st.one_of(
            st.binary(max_size=64),
            st.integers(0, len(good)).map(lambda i: good[:i]),
            JSON.map(lambda v: encode(v, ascii=False)),
        )
    )
    ctype = draw(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; boundary=x"]))
    return Case("POST", route.path, content, headers={"content-type": ctype} if ctype else {})


KNOWN_PATHS = [
    "/", "/v1", "/v1/", "/v1/chat", "/v1/chat/completions/", "/v1/completions", "/v1/models", "/v1/models/",
    "/v1/models/smollm2", "/anthropic", "/anthropic/", "/anthropic/v1", "/anthropic/v1/messages",
    "/anthropic/v1/messages/count_tokens", "/v1/messages", "/v1/messages/batches", "/v1/messagesx",
    "/health", "/metrics", "/v1/stats", "/stats", "//v1//models", "/v1/chat/completions",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"]


@st.composite
def path_cases(draw: st.DrawFn) -> Case:
    """Known and random paths (percent-encoded unicode, dot segments, long) with any method."""
    base = draw(st.sampled_from(KNOWN_PATHS))
    extra = draw(st.lists(st.one_of(SHORT, st.sampled_from(["..", ".", "%2e%2e", "x" * 2000])), max_size=3))
    path = base
    if extra:
        path = base.rstrip("/") + "".join("/" + (s if s == "%2e%2e" else quote(s, safe="")) for s in extra)
    method = draw(st.sampled_from(METHODS))
    content = None
    if method in ("POST", "PUT", "PATCH") and draw(st.booleans()):
        content = encode({"model": MODEL, "messages": hi(), "max_tokens": 1, "prompt": "x"})
    return Case(method, path, content, headers={"content-type": "application/json"} if content else {})


# Boundary values the schemas accept: each, alone on a route's skeleton, must be answered 200.
OPENAI_EDGES: dict[str, list[Any]] = {
    "temperature": [0, 5e-324, 1e-300, 2],
    "top_p": [5e-324, 1e-300, 1],
    "n": [1, 8],
    "seed": [-(2**63), 0, 2**64 - 1],
    "frequency_penalty": [-2, 2],
    "presence_penalty": [-2, 2],
    "logit_bias": [{}, {"0": -100, str(VOCAB - 1): 100}],
    "top_k": [-1, 0, 1, 2**31, 2**63 - 1, 2**63, 10**30],
    "min_p": [0, 1],
    "repetition_penalty": [5e-324, 1e-300, 1e300],
    "stop": [["a", "b", "c", "d"], "x" * 1000, HUGE],
    "ignore_eos": [True],
    "user": [HUGE],
    "timeout": [60, 1e300, 2**63],
}
EDGES: dict[str, dict[str, list[Any]]] = {
    "/v1/chat/completions": {
        **OPENAI_EDGES,
        "logprobs": [True],
        "max_completion_tokens": [1],
        "messages": [
            [{"role": "user", "content": ""}],
            [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        ],
    },
    "/v1/completions": {
        **OPENAI_EDGES,
        "logprobs": [0, 5],
        "echo": [True],
        "prompt": ["", [0], [VOCAB - 1], [[VOCAB - 1]], [""], ["x"]],
        "best_of": [1],
        "suffix": [""],
    },
    "/anthropic/v1/messages": {
        "temperature": [0, 5e-324, 1],
        "top_p": [5e-324, 1],
        "top_k": [0, 2**31, 2**63, 10**30],
        "stop_sequences": [["x" * 1000], []],
        "system": ["", [{"type": "text", "text": ""}]],
        "metadata": [{"user_id": None}],
        "timeout": [1e300],
        "messages": [[{"role": "user", "content": ""}], [{"role": "user", "content": []}]],
    },
    "/anthropic/v1/messages/count_tokens": {
        "system": ["", HUGE],
        "tools": [[TOOL] * 50],
        "messages": [[{"role": "user", "content": []}], [{"role": "user", "content": HUGE}]],
    },
}

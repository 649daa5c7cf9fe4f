"""Hypothesis strategies for fuzzing the HTTP edge: request bodies built from the valid skeletons of
`tests/fuzz_fields.py` and mutated (wrong types, out-of-range numbers, huge strings, deep nesting, unicode,
nulls, extra keys), raw bytes that are not a JSON object, random paths and methods, and the boundary values
each route accepts.

Generation stays cheap: `bounded` keeps every body that could validate at 1 or 2 new tokens, so a
fuzz run spends its time at the edge, not in the model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.fuzz_fields import EXTRA_KEYS, HUGE, JSON, RAW_MARKER, SHORT, TOOL, VOCAB, WILD, Route, hi
from tests.launch import MODEL


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
    text = RAW_MARKER.sub(lambda m: json.loads(f'"{m.group(1)}"'), json.dumps(body, ensure_ascii=ascii))
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

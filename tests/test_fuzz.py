"""Fuzzing the HTTP edge: thousands of generated bodies to every POST route, raw bytes, random paths and
methods. Never a 5xx; every error in its documented shape (OpenAI's, or Anthropic's under `/anthropic/`
and `/v1/messages`) with `param` naming a field the body has; afterwards the server still answers a
greedy request as before and holds no sequence.

Strategies live in `tests/fuzz_fields.py` (per field) and `tests/fuzz_cases.py` (whole requests); every
run has a fixed seed, so CI sees the same cases each time.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings

from server.anthropic.errors import is_anthropic_path
from tests.fuzz_cases import EDGES, Case, body_cases, broken, encode, path_cases, raw_cases
from tests.fuzz_fields import ROUTES, Route
from tests.helpers import wait_idle
from tests.launch import MODEL, Server

pytestmark = pytest.mark.slow  # thousands of generated bodies to every route

FUZZ = settings(
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=list(HealthCheck),
)
ANTHROPIC_TYPES = {
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "api_error", "overloaded_error", "timeout_error",
}  # fmt: skip
NO_BODY = object()
GREEDY = {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 12}


class Fuzzer:
    """One client for the whole module; counts what it sent, by status."""

    def __init__(self, server: Server) -> None:
        self.client = httpx.Client(base_url=server.url, timeout=120)
        self.statuses: Counter[int] = Counter()

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    def check(self, case: Case) -> None:
        r = self.client.request(case.method, case.path, content=case.content, headers=case.headers)
        self.statuses[r.status_code] += 1
        where = f"{case.method} {case.path} [{case.note}]\nbody: {(case.content or b'')[:600]!r}"
        assert r.status_code < 500, f"{r.status_code} {r.text[:600]}\n{where}"
        assert r.headers.get("x-request-id", "").startswith("req_"), where
        if case.method == "HEAD":
            return
        body = parsed(case.content)
        if r.status_code >= 400:
            check_error(r, body if case.content is not None else NO_BODY, where)
            if case.expect is not None:
                check_expected(r, case.expect, is_anthropic_path(r.request.url.path), where)
        elif case.expect is not None:
            raise AssertionError(f"expected {case.expect}, got {r.status_code}: {r.text[:300]}\n{where}")
        elif r.headers.get("content-type", "").startswith("text/event-stream"):
            check_stream(r.text, is_anthropic_path(case.path), where)


def parsed(content: bytes | None) -> Any:
    """The body as the server reads it, or None when it does not parse."""
    try:
        return json.loads(content or b"")
    except (ValueError, RecursionError):
        return None


def check_error(r: httpx.Response, body: Any, where: str) -> None:
    """The documented error shape for the path; on the OpenAI routes a `param` that names a field."""
    try:
        data = r.json()
    except ValueError:
        raise AssertionError(f"not JSON: {r.headers.get('content-type')} {r.text[:300]!r}\n{where}") from None
    if is_anthropic_path(r.request.url.path):
        assert set(data) == {"type", "error"} and data["type"] == "error", f"{data}\n{where}"
        assert data["error"]["type"] in ANTHROPIC_TYPES, f"{data}\n{where}"
        assert isinstance(data["error"]["message"], str) and data["error"]["message"], where
        return
    assert set(data) == {"error"}, f"{data}\n{where}"
    err = data["error"]
    assert set(err) >= {"message", "type", "param", "code"}, f"{data}\n{where}"
    assert isinstance(err["message"], str) and err["message"], where
    assert isinstance(err["type"], str) and isinstance(err["code"], (str, type(None))), where
    param = err["param"]
    if param is not None and body is not NO_BODY:  # without a body it names a path parameter
        assert isinstance(body, dict) and names_field(body, param.split(".")), f"param {param!r}\n{where}"


def names_field(node: Any, parts: list[str]) -> bool:
    """Whether the dotted path `parts` leads through `node` (a missing last key counts: a missing field).
    Keys may hold dots themselves (`logit_bias` keys), so every split is tried."""
    if not parts:
        return True
    if isinstance(node, list):
        head = parts[0]
        return head.isdigit() and int(head) < len(node) and names_field(node[int(head)], parts[1:])
    if not isinstance(node, dict):
        return False
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in node:
            return names_field(node[key], parts[i:])
    return len(parts) == 1


def check_expected(r: httpx.Response, expect: tuple[int, str], anthropic: bool, where: str) -> None:
    status, field = expect
    assert r.status_code == status, (
        f"expected {status} naming {field}, got {r.status_code} {r.text[:300]}\n{where}"
    )
    if not anthropic:
        param = r.json()["error"]["param"] or ""
        assert param == field or param.startswith(field + "."), f"param {param!r}, not {field}\n{where}"


def check_stream(text: str, anthropic: bool, where: str) -> None:
    """A stream that began ends normally: `message_stop` or `data: [DONE]`, no error event."""
    if anthropic:
        assert "event: error" not in text and "event: message_stop" in text, f"{text[-600:]}\n{where}"
        return
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert data and data[-1] == "[DONE]", f"{text[-600:]}\n{where}"
    assert not any(d.startswith('{"error"') for d in data), f"{text[-600:]}\n{where}"


@pytest.fixture(scope="module")
def fuzz(server: Server) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(server)
    yield fuzzer
    fuzzer.client.close()


@pytest.fixture(scope="module")
def greedy_before(fuzz: Fuzzer) -> dict[str, Any]:
    """A greedy answer taken before any fuzzing."""
    r = fuzz.client.post("/v1/chat/completions", json={**GREEDY, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_fuzz_bodies(fuzz: Fuzzer, greedy_before: dict[str, Any], route: Route) -> None:
    @settings(FUZZ, max_examples=350)
    @seed(zlib.crc32(route.path.encode()))
    @given(case=body_cases(route))
    def run(case: Case) -> None:
        fuzz.check(case)

    run()


@pytest.mark.parametrize("route", [r for r in ROUTES if r.path in EDGES], ids=lambda r: r.path)
def test_edge_values(fuzz: Fuzzer, greedy_before: dict[str, Any], route: Route) -> None:
    """Each boundary value a schema accepts, alone on the route's skeleton, is answered 200."""
    failures = []
    for name, values in EDGES[route.path].items():
        for value in values:
            body = {**route.skeleton, name: value}
            r = fuzz.client.post(
                route.path, content=encode(body), headers={"content-type": "application/json"}
            )
            fuzz.statuses[r.status_code] += 1
            if r.status_code != 200:
                failures.append(f"{name}={str(value)[:40]}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_broken_bodies(fuzz: Fuzzer, greedy_before: dict[str, Any], route: Route) -> None:
    for content in broken(encode(route.skeleton)):
        fuzz.check(Case("POST", route.path, content, headers={"content-type": "application/json"}))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
def test_fuzz_raw_bodies(fuzz: Fuzzer, greedy_before: dict[str, Any], route: Route) -> None:
    @settings(FUZZ, max_examples=80)
    @seed(zlib.crc32(route.path.encode()))
    @given(case=raw_cases(route))
    def run(case: Case) -> None:
        fuzz.check(case)

    run()


def test_fuzz_paths_and_methods(fuzz: Fuzzer, greedy_before: dict[str, Any]) -> None:
    @settings(FUZZ, max_examples=400)
    @seed(0)
    @given(case=path_cases())
    def run(case: Case) -> None:
        fuzz.check(case)

    run()


def test_server_is_sound_after_fuzzing(
    server: Server, fuzz: Fuzzer, greedy_before: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    r = fuzz.client.post("/v1/chat/completions", json={**GREEDY, "temperature": 0})
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["choices"][0]["message"]["content"] == greedy_before["choices"][0]["message"]["content"]
    assert after["usage"]["completion_tokens"] == greedy_before["usage"]["completion_tokens"]
    wait_idle(server, timeout=10)
    with capsys.disabled():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(fuzz.statuses.items()))
        print(f"\nfuzz: {fuzz.sent} requests ({statuses})")

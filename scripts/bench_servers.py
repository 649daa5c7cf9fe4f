"""The servers `scripts/bench.py` measures: Hearth started on a free port, and the peer, `transformers
serve --continuous-batching`, from `.venv-peer` (created on first use) or from `--peer-python`, or
llama.cpp's `llama-server` (`--peer llama-server --llama-server PATH`, a build of your own) on a GGUF file.

Each runs in its own process group with its log in the temp folder (`hearth-bench-<name>-<port>.log`),
is ready once /health and /v1/models answer 200, and is always stopped (TERM, then KILL).

Quirks of `transformers serve` 5.24 (checked by hand on the converted SmolLM2-135M folder, offline):
- The model folder given as FORCE_MODEL pins the server: requests must name exactly that path
  string as `model` (it is also the id /v1/models lists); any other name gets 400.
- Unknown request fields get 422 ("Unexpected fields in the request: {'ignore_eos'}"), so the
  warm-up probes for `ignore_eos` support and drops it when refused; `stream_options` is ignored
  with a log line, but the last chunk (the finish_reason one) carries `usage` anyway.
- The stream ends without `data: [DONE]`.
- The first request after start is slow (~10 s of continuous-batching set-up): the warm-up takes it.
- It reserves a large paged KV cache on CPU (~4 GiB RSS for a 135M model).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HEARTH_PY = ROOT / ".venv" / "bin" / "python"
PEER_VENV = ROOT / ".venv-peer"
PEER_TORCH = "torch==2.13.0"  # unpinned, pip pulls the multi-GB CUDA build
DEFAULT_MODEL_ID = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_model_id(url: str) -> str:
    """The model the server has loaded (Hearth: the first listed with `loaded: true`, the one it started
    with), else the first id /v1/models lists (the peer's is its model folder)."""
    models = httpx.get(f"{url}/v1/models", timeout=30.0).json()["data"]
    return str(next((m for m in models if m.get("loaded")), models[0])["id"])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll /health and /v1/models until both answer 200; fail early when the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{tail(log)}")
        try:
            if all(httpx.get(f"{url}{p}", timeout=5.0).status_code == 200 for p in ("/health", "/v1/models")):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def server(name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `cmd` in its own process group; yield its base URL once ready; always stop it (TERM, then KILL)."""
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"hearth-bench-{name}-{port}.log"
    print(f"[{name}] starting: {' '.join(cmd)} (log: {log})", flush=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        wait_ready(url, proc, log, timeout=900.0)
        yield url
    finally:
        stop(proc, name)


def stop(proc: subprocess.Popen[bytes], name: str, grace: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"[{name}] did not stop in {grace:.0f} s; killing", flush=True)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def ensure_peer_venv() -> Path:
    """`.venv-peer/bin/transformers`, installing torch (CPU, pinned) and transformers[serving] if missing."""
    exe = PEER_VENV / "bin" / "transformers"
    if exe.exists():
        return exe
    print(f"[peer] installing transformers[serving] into {PEER_VENV} (one time)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(PEER_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, PEER_TORCH, "transformers[serving]"], check=True)
    return exe


def model_dir(config: Path | None = None, model: str = DEFAULT_MODEL_ID) -> Path:
    """The folder Hearth loads `model` from: its converted safetensors cache for a GGUF source (made on
    Hearth's first start), else its source folder. The peer serves the same folder."""
    from engine.catalog.models_file import load_catalog, resolve_source
    from engine.model.loader import gguf_cache_dir

    catalog = load_catalog(config or ROOT / "models.yaml")
    cfg = catalog.resolve(model)
    if cfg is None:
        raise SystemExit(f"bench: model {model!r} is not in the catalog")
    source = resolve_source(cfg)
    if cfg.gguf_file is None:
        return source
    folder = gguf_cache_dir(cfg, source, catalog.cache_dir)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"bench: no converted model in {folder}: start Hearth once, or pass --model-dir")
    return folder


def hearth_cmd(
    port: int, python: Path | None, config: Path | None, model: str | None, dtype: str | None = None
) -> list[str]:
    """`python -m server` on `port` (python: .venv's by default, else this one), with a catalog, a
    model to load at start-up and a dtype for the unquantized models when given."""
    python = python or (HEARTH_PY if HEARTH_PY.exists() else Path(sys.executable))
    cmd = [str(python), "-m", "server", "--port", str(port), "--log-level", "warning"]
    if config:
        cmd += ["--config", str(Path(config).resolve())]
    if dtype:
        cmd += ["--dtype", dtype]
    return [*cmd, "--model", model] if model else cmd


def peer_cmd(args: argparse.Namespace, model_dir: Path, port: int) -> list[str]:
    """`transformers serve`: .venv-peer's (installed on first use), or `--peer-python -m transformers...`."""
    if args.peer_python:
        exe = [str(args.peer_python), "-m", "transformers.cli.transformers"]
    else:
        exe = [str(ensure_peer_venv())]
    return [
        *exe, "serve", str(model_dir), "--continuous-batching",
        "--device", args.peer_device, "--dtype", args.peer_dtype,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def gguf_of(config: Path | None, models: list[str]) -> Path:
    """The GGUF file of the catalog model the bench starts Hearth with (assembled into the cache first
    for a split one): what llama-server serves by default."""
    from engine.catalog.models_file import load_catalog, resolve_source
    from engine.model.loader import assembled_gguf

    catalog = load_catalog(config or ROOT / "models.yaml")
    name = models[0] if models else catalog.default
    cfg = catalog.resolve(name)
    if cfg is None or cfg.gguf_file is None:
        raise SystemExit(f"bench: model {name!r} has no GGUF file in the catalog; pass --peer-gguf")
    return assembled_gguf(cfg, catalog.cache_dir) if cfg.assemble else resolve_source(cfg) / cfg.gguf_file


def llama_cmd(args: argparse.Namespace, gguf: Path, port: int) -> list[str]:
    """llama.cpp's `llama-server` on `gguf`: --peer-threads threads, --peer-parallel slots sharing a
    context of --peer-ctx tokens, continuous batching (its default)."""
    return [
        str(args.llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
        "-t", str(args.peer_threads), "-np", str(args.peer_parallel), "-c", str(args.peer_ctx),
    ]  # fmt: skip

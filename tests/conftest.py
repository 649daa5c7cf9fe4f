"""One real Hearth server for the whole session: uvicorn on a free loopback port, the real model."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Without an NVIDIA GPU, Triton's kernels (engine.model.lean.gpu_kernels) run under its interpreter
# in tests/test_gpu_kernels.py; Triton reads this when it is first imported, so it is set first.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import openai  # noqa: E402
import pytest  # noqa: E402

from tests.launch import MODEL, ROOT, Server, launch  # noqa: E402

__all__ = ["MODEL", "ROOT", "Server", "launch", "AsyncClientFactory"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`./scripts/test` runs a worker per core), each worker owns its share of
    the cores: it and every server it starts run there (CPU affinity is inherited), and Hearth's
    engines take their thread count from it. Two workers' OpenMP teams on the same cores would
    spin against each other and make every step many times slower."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    index, workers = int(worker.removeprefix("gw")), int(count)
    mine = cores[index::workers] or [cores[index % len(cores)]]
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))


AsyncClientFactory = Callable[[], openai.AsyncOpenAI]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files that hold `slow` tests first (in their order), so that the workers start on the
    long files and finish together rather than one waiting on the other's last long file."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the order within each part stays


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with launch(["--config", str(ROOT / "models.yaml")], log, timeout=300) as launched:
        yield launched


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def aclient(server: Server) -> AsyncClientFactory:
    """Makes an `AsyncOpenAI` client. Make it inside the test's event loop and close it there
    (`async with aclient() as client:`): one kept across `asyncio.run` calls fails, "Event loop is closed"."""
    return functools.partial(
        openai.AsyncOpenAI, base_url=server.base_url, api_key="unused", max_retries=0, timeout=300
    )


@pytest.fixture(scope="session")
def tokenizer(server: Server, smollm2_dir: Path):  # type: ignore[no-untyped-def]
    """The served model's tokenizer (the same GGUF's, read from its dequantized cache folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded model dequantized into a folder (safetensors, tokenizer), for in-process engines
    (`quantization: none`: served by default, it runs from the GGUF file's own blocks instead)."""
    import dataclasses

    from engine import load_catalog
    from engine.model.loader import load_model

    catalog = load_catalog(ROOT / "models.yaml")
    cfg = dataclasses.replace(catalog.default_model, quantization="none")
    return load_model(cfg, catalog.cache_dir).source_dir


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_dir: Path) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, transformers' greedy tokens) for 4 chat prompts, 24 tokens each, in float32."""
    from tests.greedy import hf_greedy, prompts

    ids = prompts(smollm2_dir, 4)
    return ids, hf_greedy(smollm2_dir, ids, 24)

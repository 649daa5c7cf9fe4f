"""scripts/random_model.py: the random model of real shapes for side-by-side runs, and the catalog
Hearth serves it from (without llama.cpp here: no GGUFs, so the catalog holds the folder alone)."""

from __future__ import annotations

from pathlib import Path

from engine import load_catalog
from scripts.random_model import main
from tests.greedy import engine_greedy, prompts


def test_a_random_model_and_its_catalog_serve(tmp_path: Path, smollm2_dir: Path) -> None:
    assert main(["--family", "gemma3", "--size", "tiny", "--out", str(tmp_path)]) == 0
    catalog = load_catalog(tmp_path / "models.yaml")
    assert [m.id for m in catalog.models] == ["rand-bf16"]
    entry = catalog.resolve("rand-bf16")
    assert entry is not None and Path(entry.source) == tmp_path / "model" and entry.dtype == "bfloat16"
    model_dir = tmp_path / "model"
    assert '"model_type": "gemma3_text"' in (model_dir / "config.json").read_text()
    [tokens] = engine_greedy(model_dir, prompts(model_dir, 1), 4, device="cpu", dtype="bfloat16")
    assert len(tokens) == 4

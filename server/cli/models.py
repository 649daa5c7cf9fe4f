"""`hearth models` (list the catalog) and `hearth add` (append a validated entry to models.yaml)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from engine import (
    HF_PREFIX,
    PACKAGE_PREFIX,
    Catalog,
    CatalogError,
    ModelConfig,
    load_catalog,
    path_for_folder,
    resolve_source,
)

_PLAIN = re.compile(r"[A-Za-z0-9_./:@+~-]+")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, not a path that exists
_SHOWN = {
    "id",
    "aliases",
    "source",
    "gguf_file",
    "dtype",
    "device",
    "max_context",
    "max_batch_size",
    "max_waiting",
}
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


def read_catalog(path: Path) -> Catalog | None:
    """The catalog, or None after printing its problem as one line."""
    try:
        return load_catalog(path)
    except CatalogError as e:
        print(f"hearth: error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"hearth: error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
    return None


def where(cfg: ModelConfig, download: bool = True) -> tuple[str | None, str | None]:
    """(the folder `cfg` loads from, None) or (None, why it cannot be found). Without `download`, an
    `hf:` source is looked up in the local Hugging Face cache only."""
    if not download and cfg.source.startswith(HF_PREFIX):
        return cached_snapshot(cfg.source[len(HF_PREFIX) :])
    try:
        return str(resolve_source(cfg)), None
    except (OSError, ValueError) as e:
        return None, str(e).removeprefix(f"model {cfg.id!r}: ")


def cached_snapshot(repo: str) -> tuple[str | None, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return str(snapshot_download(repo, local_files_only=True)), None
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None, "not in the local Hugging Face cache (downloaded on first load when online)"


def list_models(path: Path, as_json: bool = False) -> int:
    """Print the catalog at `path`; 0, or 2 when it cannot be read."""
    catalog = read_catalog(path)
    if catalog is None:
        return 2
    rows = []
    for cfg in catalog.models:
        folder, problem = where(cfg, download=False)
        rows.append(
            {**asdict(cfg), "default": cfg.id == catalog.default, "folder": folder, "problem": problem}
        )
    if as_json:
        print(
            json.dumps({"config": str(path), "cache_dir": str(catalog.cache_dir), "models": rows}, indent=2)
        )
        return 0
    print(f"{path}: {len(rows)} model{'s' if len(rows) != 1 else ''} (cache: {catalog.cache_dir})")
    for row in rows:
        print(f"\n{row['id']}{'  (default)' if row['default'] else ''}")
        if row["aliases"]:
            print(f"  aliases: {', '.join(row['aliases'])}")
        source = row["source"] + (f"  [{row['gguf_file']}]" if row["gguf_file"] else "")
        print(f"  source:  {source}")
        print(f"  folder:  {row['folder'] or 'MISSING: ' + str(row['problem'])}")
        print(f"  dtype:   {row['dtype']}   device: {row['device']}")
        context = row["max_context"] or "auto"
        limits = f"context {context}, batch {row['max_batch_size']}, queue {row['max_waiting']}"
        print(f"  limits:  {limits}")
        others = [
            f"{f.name} {list(row[f.name]) if isinstance(row[f.name], tuple) else row[f.name]}"
            for f in fields(ModelConfig)
            if f.name not in _SHOWN and row[f.name] != f.default
        ]
        if others:
            print(f"  other:   {', '.join(others)}")
    return 0


def entry_fields(args: argparse.Namespace, config: Path) -> dict[str, Any]:
    """The new entry's fields from `hearth add`'s arguments (not yet validated)."""
    source: str = args.source
    gguf_file: str | None = args.gguf_file
    local = Path(source).expanduser()
    if not source.startswith(PACKAGE_PREFIX) and local.exists():
        local = local.resolve()
        name = local.stem if local.is_file() else local.name
        if local.is_file():
            if local.suffix != ".gguf":
                raise CatalogError(f"{source}: a file source must be a .gguf file (or give its folder)")
            local, gguf_file = local.parent, gguf_file or local.name
        elif gguf_file is None:
            gguf_file = only_gguf(local)
        source = catalog_path(local, config)
    else:
        if _REPO_ID.fullmatch(source):
            source = HF_PREFIX + source
        name = source.split(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    template: str | None = args.chat_template
    if template is not None and template.endswith(".jinja") and Path(template).expanduser().is_file():
        template = catalog_path(Path(template).expanduser().resolve(), config)
    entry: dict[str, Any] = {"id": args.id or default_id(name), "source": source}
    optional = {
        "aliases": args.alias or None,
        "gguf_file": gguf_file,
        "dtype": args.dtype,
        "device": args.device,
        "max_context": args.max_context,
        "max_batch_size": args.max_batch_size,
        "chat_template": template,
    }
    entry.update({key: value for key, value in optional.items() if value is not None})
    return entry


def catalog_path(path: Path, config: Path) -> str:
    """`path` as the catalog should name it: relative to its folder when inside it, else absolute."""
    base = config.resolve().parent
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def only_gguf(folder: Path) -> str | None:
    """The folder's GGUF file when it holds no other weights; None for a safetensors folder."""
    if any(next(folder.glob(pattern), None) for pattern in _WEIGHTS):
        return None
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) > 1:
        raise CatalogError(
            f"{folder} holds {len(ggufs)} GGUF files ({', '.join(ggufs)}): pick one with --gguf-file"
        )
    return ggufs[0] if ggufs else None


def default_id(name: str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1` -> `smollm2-135m-instruct-q4-1`."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.").replace(".", "-") or "model"


def scalar(value: Any) -> str:
    """`value` as YAML flow text: plain when that reads back the same, else JSON (which YAML reads)."""
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    text = str(value) if not isinstance(value, str) else value
    if isinstance(value, str) and _PLAIN.fullmatch(text) and yaml.safe_load(text) == value:
        return text
    if not isinstance(value, str):
        return text
    return json.dumps(value, ensure_ascii=False)


def entry_text(fields: dict[str, Any], indent: int) -> str:
    """The `- id: ...` block, its dash at column `indent`."""
    pad = " " * indent
    lines = [
        f"{pad}- {key}: {scalar(value)}" if i == 0 else f"{pad}  {key}: {scalar(value)}"
        for i, (key, value) in enumerate(fields.items())
    ]
    return "\n".join(lines) + "\n"


def item_indent(text: str) -> int:
    """The column of the dashes of the `models:` list (2 when it cannot be told)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return 2
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "models" and isinstance(value, yaml.SequenceNode) and value.value:
                line = text.splitlines()[value.value[0].start_mark.line]
                return len(line) - len(line.lstrip())
    return 2


def add_model(config: Path, args: argparse.Namespace) -> int:
    """Append the entry `args` describe to `config`, after checking the result loads; 0 or 2."""
    try:
        old = config.read_text(encoding="utf-8")
    except OSError as e:
        print(f"hearth: error: cannot read {config}: {e.strerror or e}", file=sys.stderr)
        return 2
    if read_catalog(config) is None:
        return 2
    try:
        fields = entry_fields(args, config)
    except CatalogError as e:
        print(f"hearth: error: {e}", file=sys.stderr)
        return 2
    entry = entry_text(fields, item_indent(old))
    new = old + ("" if old.endswith("\n") or not old else "\n") + entry
    if args.dry_run:
        print(entry, end="")
        return 0
    problem = write_checked(config, new, fields["id"])
    if problem is not None:
        print(f"hearth: error: {problem}", file=sys.stderr)
        return 2
    print(f"added {fields['id']!r} to {config}:\n{entry}", end="")
    print(f"path: {forward_path(config, fields['id'])}")
    return 0


def forward_path(config: Path, model_id: str) -> str:
    """Which forward the model will run (engine.model.lean's families), from its files where they
    are here; a model still to be downloaded is told when it loads (in the log)."""
    catalog = load_catalog(config)
    cfg = catalog.resolve(model_id)
    folder, why = where(cfg, download=False) if cfg is not None else (None, "not in the catalog")
    if folder is None:
        return f"told in the log when it loads ({why})"
    return path_for_folder(Path(folder), cfg.gguf_file if cfg is not None else None)


def write_checked(config: Path, text: str, model_id: str) -> str | None:
    """Write `text` to a temporary file next to `config` (so relative paths mean the same), load it, check
    the new model resolves, then move it over `config`. A one-line problem, or None."""
    fd, tmp_name = tempfile.mkstemp(prefix=".models-", suffix=".yaml", dir=config.resolve().parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        try:
            catalog = load_catalog(tmp)
        except CatalogError as e:
            return str(e).replace(str(tmp), f"{config} (with the new entry)")
        cfg = catalog.resolve(model_id)
        if cfg is None or cfg is not catalog.models[-1]:
            return f"{config}: the new entry did not land in 'models' (is 'models' the file's last key?)"
        folder, why = where(cfg)
        if folder is None:
            return f"model {model_id!r}: {why}"
        os.chmod(tmp, config.stat().st_mode & 0o7777)
        os.replace(tmp, config)
        return None
    finally:
        tmp.unlink(missing_ok=True)

"""The server's boundary with the engine: it imports only what `engine/__init__.py` exports and reads
no private attribute of an engine (the model's description is the public `Engine.info`)."""

from __future__ import annotations

import ast
from pathlib import Path

import engine
from engine import Engine, ModelInfo
from tests.launch import ROOT

SERVER_FILES = sorted((ROOT / "server").rglob("*.py"))


def _in_engine(module: str) -> bool:
    return module.split(".")[0] == "engine"


def _engine_imports(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every import of `engine` or a module under it in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _in_engine(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _in_engine(node.module or ""):
            names = ", ".join(a.name for a in node.names)
            found.append((node.lineno, f"from {node.module} import {names}"))
    return found


def test_server_imports_only_the_engine_package_exports() -> None:
    assert len(SERVER_FILES) > 20
    wrong = []
    for path in SERVER_FILES:
        for line, statement in _engine_imports(path):
            names = statement.split(" import ", 1)[1].split(", ")
            if not statement.startswith("from engine import ") or not set(names) <= set(engine.__all__):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {statement}")
    assert wrong == []


def test_the_checker_sees_a_deep_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import engine.core\nfrom engine.model.runner import ModelRunner\nfrom engine import Engine\n"
    )
    assert _engine_imports(module) == [
        (1, "import engine.core"),
        (2, "from engine.model.runner import ModelRunner"),
        (3, "from engine import Engine"),
    ]


ENGINE_PRIVATE = ("model", "runner", "scheduler", "sampler", "grammars")


def test_server_reads_no_private_attribute_of_an_engine() -> None:
    """No `engine.runner`, `engine.model`... (nor `engine._x`) in the server, whatever the variable's name
    among those the server uses for an engine."""
    wrong = []
    for path in SERVER_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("engine", "eng", "loaded_engine")
                and (node.attr in ENGINE_PRIVATE or node.attr.startswith("_"))
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert wrong == []


def test_model_info_is_exported_and_frozen() -> None:
    assert "ModelInfo" in engine.__all__
    assert ModelInfo.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "info" in (Engine.__doc__ or "")

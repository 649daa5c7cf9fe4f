"""Every code block in docs/ and the README runs: python and bash blocks against the session's real server,
yaml blocks through the catalog reader, json blocks through the JSON parser. A block (of any language, or
none) is marked by the HTML comment on the line before it:

    <!-- test -->                   run it; it must exit 0 and print something
    <!-- test expect="Paris" -->    ... and its output must contain the text
    <!-- not tested: why -->        not run (it starts a server, needs Docker, is a drawing or an nginx
                                    configuration...); the reason is required

`http://127.0.0.1:8000` in a block is replaced by the test server's address; bash blocks find `hearth`
on PATH (this interpreter's bin folder) and run from the repository root.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.catalog.config import ModelConfig
from engine.catalog.models_file import _TOP_KEYS, load_catalog
from tests.launch import ROOT, Server

DOCS = ROOT / "docs"
FILES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
DOC_URL = "http://127.0.0.1:8000"
RUNNABLE = ("python", "bash", "yaml", "json")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
MARK = re.compile(r"<!--\s*(test|not tested:[^>]+?)(?:\s+expect=\"([^\"]*)\")?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int
    lang: str
    code: str
    mark: str | None  # "test", "not tested: ...", or None
    expect: str | None

    @property
    def name(self) -> str:
        return f"{self.file.name}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            lang = match[1]
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = MARK.search(before)
            found.append(
                Block(
                    path, line, lang, match[2], mark[1].strip() if mark else None, mark[2] if mark else None
                )
            )
    return found


ALL = blocks()
TESTED = [b for b in ALL if b.mark == "test"]


def test_every_block_is_tested_or_says_why_not() -> None:
    unmarked = [b.name for b in ALL if b.mark is None]
    assert not unmarked, f"mark these blocks <!-- test --> or <!-- not tested: why -->: {unmarked}"
    cannot_run = [f"{b.name} ({b.lang or 'no language'})" for b in TESTED if b.lang not in RUNNABLE]
    assert not cannot_run, f"only {RUNNABLE} blocks run; say why these are not tested: {cannot_run}"
    assert len(TESTED) >= 15 and {b.file.name for b in TESTED} >= {"README.md", "clients.md"}


def test_the_block_reader_sees_blocks_without_a_language() -> None:
    assert any(b.lang == "" and b.file.name == "README.md" for b in ALL)
    assert any(b.lang == "nginx" for b in ALL)


def run(block: Block, server: Server, tmp_path: Path) -> str:
    code = block.code.replace(DOC_URL, server.url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "HEARTH_URL": server.url}
    if block.lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, (
        f"{block.name} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.mark.parametrize("block", TESTED, ids=[b.name for b in TESTED])
def test_example_runs(block: Block, server: Server, tmp_path: Path) -> None:
    if block.lang == "yaml":
        path = tmp_path / "models.yaml"
        path.write_text(block.code)
        (tmp_path / "templates").symlink_to(ROOT / "templates")  # paths are relative to models.yaml
        catalog = load_catalog(path)
        assert catalog.models
        return
    if block.lang == "json":
        assert json.loads(block.code)
        return
    out = run(block, server, tmp_path)
    assert out.strip(), f"{block.name} printed nothing"
    if block.expect is not None:
        assert block.expect in out, f"{block.name}: {block.expect!r} not in:\n{out}"


def test_configuration_reference_names_every_field() -> None:
    text = (DOCS / "configuration.md").read_text()
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    missing = [name for name in [*_TOP_KEYS, *fields] if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not describe {missing}"

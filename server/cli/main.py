"""The `hearth` command line (also `python -m server`): serve, models, add, chat, bench.

Without a command, or with flags only, `hearth` serves: `hearth --port 8001` is `hearth serve --port 8001`
(`scripts/serve` and the tests start the server that way).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from server.http.auth import KEYS_ENV, keys_from_env, keys_from_file
from server.settings import MiB, Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPT = ROOT / "scripts" / "bench.py"
DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "HEARTH_URL"
CLIENT_KEY_ENV = "HEARTH_API_KEY"


def default_config_path() -> Path:
    """`$HEARTH_CONFIG`, else the `models.yaml` next to the `server` package (the repository's)."""
    env = os.environ.get("HEARTH_CONFIG")
    if env:
        return Path(env).expanduser()
    return ROOT / "models.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearth",
        description="A local OpenAI- and Anthropic-compatible LLM server.",
        epilog="Without a command hearth serves: `hearth --port 8001` is `hearth serve --port 8001`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_args(
        sub.add_parser(
            "serve",
            help="serve the catalog over HTTP (the default)",
            description="Serve the models of a models.yaml over the OpenAI and Anthropic HTTP APIs.",
        )
    )
    models = sub.add_parser(
        "models",
        help="list the catalog's models and where each comes from",
        description="List the models of a models.yaml: id, aliases, source and the folder it resolves to, "
        "dtype and device.",
    )
    add_config_arg(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_add_args(
        sub.add_parser(
            "add",
            help="append a model to models.yaml from a local path or repo id",
            description="Append a model entry to models.yaml (comments and layout are kept). The new "
            "catalog is validated before it replaces the old one.",
        )
    )
    add_chat_args(
        sub.add_parser(
            "chat",
            help="chat in the terminal with a running server",
            description="Chat with a running Hearth (or any OpenAI-compatible server), streaming. The "
            "conversation is kept; /reset forgets it, /exit (or Ctrl-D) quits, Ctrl-C stops an answer.",
        )
    )
    sub.add_parser(
        "bench", add_help=False, help="benchmark a server (scripts/bench.py; `hearth bench --help`)"
    )
    return parser


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="models.yaml (default: $HEARTH_CONFIG, else the repository's models.yaml)",
    )


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--model", default=None, help="catalog model (id or alias) loaded at startup; default: the catalog's"
    )
    add_config_arg(parser)
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default: %(default)s")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default=None,
        help="override the dtype of every unquantized catalog model (default: each model's own)",
    )
    parser.add_argument(
        "--max-n", type=int, default=8, help="most choices per request (default: %(default)s)"
    )
    add_operating_args(parser)


def add_operating_args(parser: argparse.ArgumentParser) -> None:
    """Flags for running Hearth as a service: keys, CORS, limits, timeouts, shutdown."""
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help=f"file of API keys, one a line (added to ${KEYS_ENV}, comma-separated); with keys set, "
        "every route but /health and the chat page needs one",
    )
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from ORIGIN (repeatable; '*' for any); default: CORS off",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=4 * MiB, help="largest request body (default: %(default)s)"
    )
    parser.add_argument(
        "--max-messages", type=int, default=1024, help="most messages per chat request (default: %(default)s)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="deadline for requests that set no 'timeout' field or x-request-timeout header (default: none)",
    )
    add_fault_args(parser)
    parser.add_argument(
        "--responses-db",
        type=Path,
        default=None,
        metavar="PATH",
        help="SQLite file of stored /v1/responses (default: responses.sqlite3 in the catalog's cache_dir)",
    )
    parser.add_argument(
        "--responses-max-count",
        type=int,
        default=10_000,
        metavar="N",
        help="most stored responses, the oldest dropped first; 0 stores none (default: %(default)s)",
    )
    parser.add_argument(
        "--responses-max-age-days",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="stored responses older than this are dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="on SIGTERM, time running requests get to finish (default: %(default)s)",
    )


def add_fault_args(parser: argparse.ArgumentParser) -> None:
    """Engine restarts, load retries and connection limits (README "Faults and connections")."""
    parser.add_argument(
        "--engine-max-restarts",
        type=int,
        default=3,
        help="restarts of a model's engine within --engine-restart-window before the model is "
        "unavailable for the window (default: %(default)s)",
    )
    parser.add_argument(
        "--engine-restart-window", type=float, default=300.0, metavar="SECONDS", help="default: %(default)s"
    )
    parser.add_argument(
        "--load-retry",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a failed model load is retried by a request after this long, doubling up to 300 s "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=4096,
        help="open connections before new requests get 503 (uvicorn's; default: %(default)s)",
    )
    parser.add_argument("--backlog", type=int, default=2048, help="TCP listen backlog (default: %(default)s)")
    parser.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this long (default: %(default)s)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        default=64 * 1024,
        help="largest request line + headers (h11's max incomplete event size; default: %(default)s)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after it opened "
        "(or after its last response) (default: %(default)s)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="close a connection whose request body is not complete this long after its headers "
        "(default: %(default)s)",
    )


def add_add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a local Hugging Face model folder, a .gguf file, package:<python package>, or a repo id "
        "(org/name or hf:org/name: the local Hugging Face cache, the hub when online)",
    )
    parser.add_argument("--id", help="the model's name in requests (default: from the source's name)")
    parser.add_argument("--alias", action="append", default=[], help="another accepted name (repeatable)")
    parser.add_argument("--gguf-file", help="the GGUF file inside the source folder (default: the only one)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), help="default: auto")
    parser.add_argument("--device", help="auto, cpu, cuda, ... (default: auto)")
    parser.add_argument("--max-context", type=int, help="prompt + completion tokens per sequence")
    parser.add_argument("--max-batch-size", type=int, help="sequences decoded together")
    parser.add_argument(
        "--chat-template", help="a .jinja file or inline Jinja text overriding the tokenizer's"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the entry, change nothing")
    add_config_arg(parser)


def add_chat_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the server (default: ${URL_ENV}, else {DEFAULT_URL}); a trailing /v1 is optional",
    )
    parser.add_argument("--model", help="model id or alias (default: the first the server lists)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(CLIENT_KEY_ENV) or "unused",
        help=f"the key to send (default: ${CLIENT_KEY_ENV})",
    )
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    parser.add_argument("--max-tokens", type=int, help="longest answer in tokens")


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The serve flags as `Settings`; bad values end in `parser.error` (one line, exit 2)."""
    config = args.config if args.config is not None else default_config_path()
    keys = keys_from_env(os.environ)
    if args.api_key_file is not None:
        try:
            file_keys = keys_from_file(args.api_key_file)
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"cannot read --api-key-file: {e}")
        if not file_keys:
            parser.error(f"--api-key-file {args.api_key_file} holds no keys")
        keys += file_keys
    # every flag whose dest is a Settings field goes there as is; the others are read above
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if hasattr(args, f.name)}
    try:
        return Settings(
            config_path=config,
            default_model=args.model,
            api_keys=tuple(dict.fromkeys(keys)),
            cors_origins=tuple(args.cors_origin),
            faults=faults_from_env(parser),
            **same,
        )
    except ValueError as e:
        parser.error(str(e))


def faults_from_env(parser: argparse.ArgumentParser) -> str | None:
    """`$HEARTH_FAULTS` (tests only: engine.core.faults), checked; a bad value is a usage error."""
    from engine import FAULTS_ENV, parse_faults

    text = os.environ.get(FAULTS_ENV) or None
    if text is not None:
        try:
            parse_faults(text)
        except ValueError as e:
            parser.error(str(e))
    return text


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The serve flags (`hearth serve ...` without the command word) as `Settings`."""
    parser = argparse.ArgumentParser(prog="hearth serve")
    add_serve_args(parser)
    return settings_from_args(parser, parser.parse_args(argv))


def with_command(argv: Sequence[str]) -> list[str]:
    """`argv` with `serve` put first when it names no command (nothing, or flags other than --help)."""
    args = list(argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help")):
        return ["serve", *args]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args_list = with_command(sys.argv[1:] if argv is None else argv)
    if args_list[0] == "bench":
        raise SystemExit(run_bench(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        from server.serve import run  # imports uvicorn, the app and torch: only when serving

        run(parse_args(args_list[1:]))
    elif args.command == "models":
        from server.cli.models import list_models

        raise SystemExit(list_models(args.config or default_config_path(), as_json=args.json))
    elif args.command == "add":
        from server.cli.models import add_model

        raise SystemExit(add_model(args.config or default_config_path(), args))
    elif args.command == "chat":
        from server.cli.chat import chat

        raise SystemExit(chat(args))


def run_bench(argv: Sequence[str]) -> int:
    """`scripts/bench.py` with `argv`, in this interpreter; its exit status."""
    if not BENCH_SCRIPT.is_file():
        print(
            f"hearth: error: {BENCH_SCRIPT} not found; `hearth bench` needs a source checkout",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, str(BENCH_SCRIPT), *argv])

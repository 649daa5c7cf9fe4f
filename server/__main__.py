"""`python -m server` (or `hearth`): parse the command line and run the app under uvicorn."""

from __future__ import annotations

import argparse
import contextvars
import ipaddress
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from engine import CatalogError, load_catalog
from server.app import create_app
from server.auth import KEYS_ENV, keys_from_env, keys_from_file
from server.context import RequestIdFilter
from server.drain import Drain
from server.settings import MiB, Settings

logger = logging.getLogger("server")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def default_config_path() -> Path:
    """`$HEARTH_CONFIG`, else the `models.yaml` next to the `server` package (the repository's)."""
    env = os.environ.get("HEARTH_CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "models.yaml"


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="hearth", description="A local OpenAI-compatible LLM server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--model", default=None, help="catalog model (id or alias) loaded at startup; default: the catalog's"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="models.yaml to serve (default: $HEARTH_CONFIG, else the repository's models.yaml)",
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="default: %(default)s")
    parser.add_argument(
        "--max-n", type=int, default=8, help="most choices per request (default: %(default)s)"
    )
    add_operating_args(parser)
    args = parser.parse_args(argv)
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
    try:
        return Settings(
            config_path=config,
            host=args.host,
            port=args.port,
            default_model=args.model,
            log_level=args.log_level,
            max_n=args.max_n,
            max_body_bytes=args.max_body_bytes,
            max_messages=args.max_messages,
            api_keys=tuple(dict.fromkeys(keys)),
            cors_origins=tuple(args.cors_origin),
            request_timeout=args.request_timeout,
            shutdown_grace=args.shutdown_grace,
        )
    except ValueError as e:
        parser.error(str(e))


def add_operating_args(parser: argparse.ArgumentParser) -> None:
    """Flags for running Hearth as a service: keys, CORS, limits, timeouts, shutdown."""
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help=f"file of API keys, one a line (added to ${KEYS_ENV}, comma-separated); with keys set, "
        "every route but /health needs one",
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
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="on SIGTERM, time running requests get to finish (default: %(default)s)",
    )


def check_catalog(settings: Settings) -> str | None:
    """A one-line problem with the catalog or `--model`, or None; saves a lifespan traceback."""
    try:
        catalog = load_catalog(settings.config_path)
    except (CatalogError, OSError) as e:
        return f"cannot read the model catalog: {e}"
    if settings.default_model is not None and catalog.resolve(settings.default_model) is None:
        names = ", ".join(name for cfg in catalog.models for name in cfg.names)
        return f"--model {settings.default_model!r} is not in {settings.config_path} (known: {names})"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
        datefmt="%H:%M:%S",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    problem = check_catalog(settings)
    if problem is not None:
        print(f"hearth: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if settings.api_keys:
        logger.info("API keys required (%d configured); /health stays open", len(settings.api_keys))
    elif not is_loopback(settings.host):
        logger.warning(
            "listening on %s without API keys: the API is reachable from other machines, and anyone who "
            "can reach it can use the models; set $%s or --api-key-file",
            settings.host,
            KEYS_ENV,
        )
    serve(create_app(settings), settings)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also starts the app's drain when told to exit (SIGTERM, SIGINT)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs inside whatever request context the main thread was in: leave it.
        contextvars.Context().run(self.drain.start)
        super().handle_exit(sig, frame)


def serve(app: Starlette, settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain: no new connections or requests (503), open ones get
    `shutdown_grace` seconds, the engines stop, and the process exits 0."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
    )
    # uvicorn re-raises the signal that stopped it once it is done; exit 0 then, not by the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        DrainingServer(config, app.state.drain).run()
    except KeyboardInterrupt:
        pass


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()

"""`python -m server` (or `hearth`): parse the command line and run the app under uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from engine import CatalogError, load_catalog
from server.app import create_app
from server.settings import Settings

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
    args = parser.parse_args(argv)
    config = args.config if args.config is not None else default_config_path()
    try:
        return Settings(
            config_path=config,
            host=args.host,
            port=args.port,
            default_model=args.model,
            log_level=args.log_level,
            max_n=args.max_n,
        )
    except ValueError as e:
        parser.error(str(e))


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
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    problem = check_catalog(settings)
    if problem is not None:
        print(f"hearth: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if not is_loopback(settings.host):
        logger.warning(
            "listening on %s: the API is reachable from other machines, and anyone who can reach it "
            "can use the models",
            settings.host,
        )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()

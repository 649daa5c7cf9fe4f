"""`hearth serve`: check the catalog, set up logging, and run the app under uvicorn until SIGTERM."""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import math
import signal
import sys
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from engine import CatalogError, load_catalog
from server.app import create_app
from server.http.auth import KEYS_ENV
from server.http.connections import raise_open_files, uvicorn_options
from server.http.context import RequestIdFilter
from server.http.drain import Drain
from server.settings import Settings

logger = logging.getLogger("server")


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


def run(settings: Settings) -> None:
    """Serve `settings` until SIGTERM or Ctrl-C; exits 2 with one line when the catalog is bad."""
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
        logger.info(
            "API keys required (%d configured); /health and the chat page stay open", len(settings.api_keys)
        )
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
    raise_open_files(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        **uvicorn_options(settings),
    )
    # uvicorn re-raises the signal that stopped it once it is done; exit 0 then, not by the signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        DrainingServer(config, app.state.drain).run()
    except KeyboardInterrupt:
        pass


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)

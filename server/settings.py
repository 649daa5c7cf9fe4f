"""The server's configuration: one frozen record built by `python -m server` (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Where to listen, which catalog to serve, and the limits applied at the HTTP edge.

    `default_model` is an id or alias from the catalog; None means the catalog's own default.
    That model is loaded while the server starts; the others load on their first request.
    `api_keys` empty means no authentication; they never appear in `repr` (nor in logs).
    `request_timeout` (seconds) applies to requests that set no `timeout` themselves; None: none.
    """

    config_path: Path
    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str | None = None
    log_level: str = "info"
    max_body_bytes: int = 4 * MiB
    max_n: int = 8  # choices (n) per request
    max_messages: int = 1024  # messages per chat request
    max_json_depth: int = 64  # nesting of arrays and objects in a request body
    system_fingerprint: str = "fp_hearth"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    cors_origins: tuple[str, ...] = ()
    request_timeout: float | None = None
    shutdown_grace: float = 15.0  # seconds running requests may take to finish after SIGTERM
    dtype: str | None = None  # overrides every unquantized catalog model's dtype (--dtype)
    # Faults (README "Faults"): engine restarts per window, then unavailable; failed loads retried
    engine_max_restarts: int = 3
    engine_restart_window: float = 300.0  # seconds
    load_retry: float = 5.0  # seconds before a failed load is retried (doubling, at most 300 s)
    faults: str | None = None  # $HEARTH_FAULTS: injected faults, for tests only (engine.core.faults)
    # Connections (server.http.connections): uvicorn's limits and Hearth's read timeouts
    limit_concurrency: int | None = 4096  # open connections (and tasks) before new requests get 503
    backlog: int = 2048  # pending TCP connections the kernel queues
    timeout_keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    max_header_bytes: int = 64 * 1024  # request line + headers (h11's max incomplete event size)
    header_timeout: float = 10.0  # seconds from connecting (or the end of a response) to full headers
    body_timeout: float = 60.0  # seconds from the headers to the end of the body
    # Stored responses (/v1/responses): the SQLite file (None: `responses.sqlite3` in the catalog's
    # cache_dir), how many it keeps (0: none are stored) and for how long.
    responses_db: Path | None = None
    responses_max_count: int = 10_000
    responses_max_age_days: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if self.max_n < 1:
            raise ValueError("max_n must be >= 1")
        if self.max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if self.max_json_depth < 2:
            raise ValueError("max_json_depth must be >= 2")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and have no surrounding whitespace")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ValueError("request_timeout must be > 0 seconds")
        if self.responses_max_count < 0:
            raise ValueError("responses_max_count must be >= 0")
        if not self.responses_max_age_days > 0:
            raise ValueError("responses_max_age_days must be > 0")
        if not self.shutdown_grace >= 0:
            raise ValueError("shutdown_grace must be >= 0 seconds")
        if self.engine_max_restarts < 0:
            raise ValueError("engine_max_restarts must be >= 0")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError("limit_concurrency must be >= 1")
        if self.backlog < 1 or self.max_header_bytes < 1024:
            raise ValueError("backlog must be >= 1 and max_header_bytes >= 1024")
        for name in (
            "engine_restart_window",
            "load_retry",
            "timeout_keep_alive",
            "header_timeout",
            "body_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")

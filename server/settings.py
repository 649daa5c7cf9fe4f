"""The server's configuration: one frozen record built by `python -m server` (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Where to listen, which catalog to serve, and the limits applied at the HTTP edge.

    `default_model` is an id or alias from the catalog; None means the catalog's own default.
    That model is loaded while the server starts; the others load on their first request.
    """

    config_path: Path
    host: str = "127.0.0.1"
    port: int = 8000
    default_model: str | None = None
    log_level: str = "info"
    max_body_bytes: int = 4 * MiB
    max_n: int = 8  # choices (n) per request
    system_fingerprint: str = "fp_hearth"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        if self.max_n < 1:
            raise ValueError("max_n must be >= 1")

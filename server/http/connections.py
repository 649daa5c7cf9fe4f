"""Connection limits: uvicorn's own settings, plus the read timeouts uvicorn lacks.

uvicorn (0.54, h11) closes a keep-alive connection idle after a response (`timeout_keep_alive`) and
answers 503 past `limit_concurrency` open connections, but waits forever for the headers of a
connection that opened and sent nothing or trickles bytes (slowloris), and for a body that trickles.
`guarded_protocol` is uvicorn's h11 protocol with two deadlines: the request's headers must be complete
`header_timeout` seconds after the connection opened (or its data resumed after a response), its body
`body_timeout` seconds after the headers; else the connection is closed (the app, if it was reading
the body, sees a disconnect).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.settings import Settings

logger = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The `uvicorn.Config` keywords for the connection flags (`hearth serve --help`)."""
    return {
        "http": guarded_protocol(settings.header_timeout, settings.body_timeout),
        "limit_concurrency": settings.limit_concurrency,
        "backlog": settings.backlog,
        "timeout_keep_alive": settings.timeout_keep_alive,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def raise_open_files(settings: Settings) -> None:
    """Raise this process's soft limit on open files towards the hard limit, so that
    `limit_concurrency` connections (plus the backlog and the models' files) can be open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = (settings.limit_concurrency or 0) + settings.backlog + 256
    new = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if soft != resource.RLIM_INFINITY and soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        logger.debug("open files limit raised from %d to %d", soft, new)
    if hard != resource.RLIM_INFINITY and hard < want:
        logger.warning(
            "open files are limited to %d (ulimit -n), below --limit-concurrency %s + --backlog %d: "
            "connections past it wait in the backlog",
            hard,
            settings.limit_concurrency,
            settings.backlog,
        )


def guarded_protocol(header_timeout: float, body_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header and body deadlines (seconds)."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


class GuardedH11Protocol(H11Protocol):
    header_timeout = 10.0
    body_timeout = 60.0

    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: str | None = None  # "headers" or "body"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # a request line and headers under way
            if self._waiting_for != "headers":
                self._arm("headers")
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._arm("body")
        else:  # the request is complete (or the connection is done)
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # idle from here: uvicorn's keep-alive timeout applies until data comes
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, what: str) -> None:
        self._disarm()
        seconds = self.header_timeout if what == "headers" else self.body_timeout
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _expired(self, what: str) -> None:
        self._deadline, self._waiting_for = None, None
        expected = h11.IDLE if what == "headers" else h11.SEND_BODY
        if self.transport.is_closing() or self.conn.their_state is not expected:
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        seconds = self.header_timeout if what == "headers" else self.body_timeout
        logger.info("closing the connection of %s: request %s not complete in %g s", client, what, seconds)
        self.transport.close()

"""What the app holds while it runs: created in `lifespan`, reached from a route via `app_state(request)`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.requests import Request

from engine import ModelRegistry
from server.http.errors import APIError
from server.openai.responses.store import ResponseStore
from server.settings import Settings

logger = logging.getLogger(__name__)


class IgnoredFields:
    """Logs each unknown request field once per process (per app), not once per request."""

    def __init__(self) -> None:
        self._seen: set[str] = set()  # touched only on the event loop

    def note(self, where: str, names: Iterable[str]) -> None:
        for name in names:
            key = f"{where}:{name}"
            if key in self._seen:
                continue
            self._seen.add(key)
            logger.info("%s: ignoring unknown field %r", where, name)


@dataclass(frozen=True)
class AppState:
    settings: Settings
    registry: ModelRegistry
    default_model: str  # catalog id loaded at startup
    started_at: int  # unix time, reported as each model's `created`
    ignored_fields: IgnoredFields = field(default_factory=IgnoredFields)
    responses: ResponseStore | None = None  # stored responses; None when the server keeps none
    responses_problem: str | None = None  # why `responses` is None (settings, or a database not opened)


def app_state(request: Request) -> AppState:
    """The running app's state; set by `lifespan` before the first request is served."""
    state = getattr(request.app.state, "hearth", None)
    if not isinstance(state, AppState):
        raise APIError(503, "the server is not ready (its lifespan has not run)", code="model_unavailable")
    return state

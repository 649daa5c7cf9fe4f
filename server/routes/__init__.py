"""Routes, one module per API family; each module declares its `routes` as data."""

from __future__ import annotations

from starlette.routing import BaseRoute

from server.routes import anthropic, chat, completions, health, models


def all_routes() -> list[BaseRoute]:
    return [*health.routes, *models.routes, *chat.routes, *completions.routes, *anthropic.routes]

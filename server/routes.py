"""Every route of the app, one list per API surface; each surface declares its `routes` as data."""

from __future__ import annotations

from starlette.routing import BaseRoute

from server.anthropic import routes as anthropic
from server.http import health
from server.ollama import routes as ollama
from server.openai import chat, completions, embeddings, models, tokenize
from server.openai.responses import routes as responses


def all_routes() -> list[BaseRoute]:
    return [
        *health.routes,
        *models.routes,
        *chat.routes,
        *completions.routes,
        *responses.routes,
        *embeddings.routes,
        *tokenize.routes,
        *anthropic.routes,
        *ollama.routes,
    ]

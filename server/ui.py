"""The chat page for people: GET / and its two assets, plain files from `server/static/` (no build step).

They are open even when API keys are set (`OPEN_PATHS`): the page holds no data, and the API calls it makes
carry the key the user types into it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"chat.js": "text/javascript", "chat.css": "text/css"}
OPEN_PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})
# Everything the page loads comes from this server; no inline script or style.
HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


def _asset(name: str) -> Route:
    async def serve(request: Request) -> Response:
        return FileResponse(STATIC / name, media_type=f"{ASSETS[name]}; charset=utf-8", headers=HEADERS)

    return Route(f"/ui/{name}", serve, methods=["GET"])


routes = (Route("/", index, methods=["GET"]), *(_asset(name) for name in ASSETS))

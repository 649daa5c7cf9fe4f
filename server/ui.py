"""The chat page for people: GET / and its assets under /ui/, plain files from `server/static/` (no build
step): the page's own scripts and style, and the browser libraries vendored in `static/vendor/` (see its
README: pinned npm versions and their licenses).

They are open even when API keys are set (`OPEN_PATHS`): the page holds no data, and the API calls it makes
carry the key the user types into it. Only the .js and .css files found at start-up are served, by name.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css"}


def _assets(folder: Path) -> frozenset[str]:
    """Each servable file's path under `folder`, posix, e.g. `vendor/marked/marked.umd.js`."""
    return frozenset(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.suffix in TYPES
    )


ASSETS = _assets(STATIC)
OPEN_PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})
# Everything the page loads comes from this server; no inline script or style.
HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return Response("Not Found", status_code=404, media_type="text/plain")
    return FileResponse(
        STATIC / name, media_type=f"{TYPES[Path(name).suffix]}; charset=utf-8", headers=HEADERS
    )


routes = (Route("/", index, methods=["GET"]), Route("/ui/{name:path}", asset, methods=["GET"]))

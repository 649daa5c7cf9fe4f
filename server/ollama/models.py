"""The catalog in Ollama's shapes: GET /api/tags, POST /api/show, GET /api/ps, GET /api/version, and
the model-management routes Hearth leaves to its CLI.

Names are catalog ids or aliases; `name:latest` names `name` as well (Ollama's default tag). Sizes,
families and parameter counts are known once a model is loaded (0 or "" before). `digest` is a hash
of the model's id and source, stable across restarts. `/api/version` reports the Ollama API level
Hearth follows (clients gate features on it) and Hearth's own version as `hearth`.
/api/pull, /api/push, /api/create, /api/copy and /api/delete are 501 with a pointer to `hearth add`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine import Engine, ModelConfig, UnknownModelError
from server.http.body import read_body
from server.http.errors import APIError
from server.ollama.schemas import ShowRequest
from server.output.reasoning import template_thinks
from server.state import AppState, app_state

OLLAMA_API_VERSION = "0.12.0"
FOREVER = datetime(2318, 1, 1, tzinfo=timezone.utc)  # Ollama's expiry for a model kept loaded for good


def resolve(state: AppState, name: str) -> ModelConfig:
    """The catalog entry `name` names (id or alias, `:latest` optional); 400 without one, 404 unknown."""
    if not name:
        raise APIError(400, "model is required", param="model")
    for candidate in (name, name.removesuffix(":latest")):
        try:
            return state.registry.resolve(candidate)
        except UnknownModelError:
            continue
    message = f"model '{name}' not found; Hearth serves the models of its catalog (add one with 'hearth add')"
    raise APIError(404, message, param="model", code="model_not_found")


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def digest(cfg: ModelConfig) -> str:
    return hashlib.sha256(f"{cfg.id}\n{cfg.source}\n{cfg.gguf_file or ''}".encode()).hexdigest()


def parameter_count(engine: Engine) -> int:
    """The model's weights (`ModelInfo.parameters`)."""
    return engine.info.parameters


def _size_label(count: int) -> str:
    if count <= 0:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}".removesuffix(".0") + unit
    return str(count)


def details(cfg: ModelConfig, engine: Engine | None) -> dict[str, Any]:
    family = "" if engine is None else engine.info.model_type
    level = cfg.quantization.upper() if cfg.quantization != "none" else ""
    if engine is not None and not level:
        level = engine.info.dtype.upper()
    return {
        "parent_model": "",
        "format": "gguf" if cfg.gguf_file else "safetensors",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": "" if engine is None else _size_label(parameter_count(engine)),
        "quantization_level": level,
    }


def _entry(state: AppState, cfg: ModelConfig) -> dict[str, Any]:
    engine = state.registry.peek(cfg.id)
    return {
        "name": cfg.id,
        "model": cfg.id,
        "modified_at": _time(state.started_at),
        "size": state.registry.loaded_bytes(cfg.id) or 0,
        "digest": digest(cfg),
        "details": details(cfg, engine),
    }


async def tags(request: Request) -> Response:
    state = app_state(request)
    return JSONResponse({"models": [_entry(state, cfg) for cfg in state.registry.models()]})


async def ps(request: Request) -> Response:
    state = app_state(request)
    out = []
    for model_id in state.registry.loaded_ids():
        cfg, engine = state.registry.resolve(model_id), state.registry.peek(model_id)
        if engine is None:  # unloaded meanwhile
            continue
        left = state.registry.expires_in(model_id)
        expires = (
            FOREVER
            if left is None or math.isinf(left)
            else datetime.now(timezone.utc) + timedelta(seconds=left)
        )
        size = state.registry.loaded_bytes(model_id) or 0
        on_gpu = not engine.info.device.startswith("cpu")
        out.append(
            {
                **_entry(state, cfg),
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
                "size": size,
                "size_vram": size if on_gpu else 0,
                "context_length": engine.max_context,
            }
        )
    return JSONResponse({"models": out})


def capabilities(engine: Engine | None) -> list[str]:
    """What a model does, in Ollama's words; every chat model gets tools (by template or prompt)."""
    caps = ["completion", "tools"]
    if engine is not None and template_thinks(engine.tokenizer):
        caps.append("thinking")
    return caps


async def show(request: Request) -> Response:
    state = app_state(request)
    body = await read_body(request, ShowRequest, "ollama.show")
    cfg = resolve(state, body.model_name)
    engine = state.registry.peek(cfg.id)
    context = engine.max_context if engine is not None else cfg.max_context or 0  # 0: not loaded, unset
    info: dict[str, Any] = {"general.context_length": context}
    template = ""
    if engine is not None:
        arch = details(cfg, engine)["family"]
        info = {
            "general.architecture": arch,
            "general.parameter_count": parameter_count(engine),
            f"{arch}.context_length": context,
        }
        template = str(getattr(engine.tokenizer, "chat_template", "") or "")
    source = cfg.source if cfg.gguf_file is None else f"{cfg.source} ({cfg.gguf_file})"
    return JSONResponse(
        {
            "modelfile": f"# Hearth catalog entry {cfg.id} (models.yaml)\nFROM {source}\n",
            "parameters": f"num_ctx {context}",
            "template": template,
            "details": details(cfg, engine),
            "model_info": info,
            "capabilities": ["embedding"] if cfg.task == "embed" else capabilities(engine),
            "modified_at": _time(state.started_at),
        }
    )


async def version(request: Request) -> Response:
    try:
        hearth = importlib.metadata.version("hearth")
    except importlib.metadata.PackageNotFoundError:
        hearth = "unknown"
    return JSONResponse({"version": OLLAMA_API_VERSION, "hearth": hearth})


async def unsupported(request: Request) -> Response:
    """Pulling, pushing, creating, copying and deleting models: not this API's job in Hearth."""
    what = request.url.path.removeprefix("/api/")
    message = (
        f"/api/{what} is not supported by Hearth: models come from its catalog (models.yaml); "
        "add one with 'hearth add <hf:repo or folder>' and restart the server"
    )
    raise APIError(501, message)


routes: tuple[BaseRoute, ...] = (
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
    *(
        Route(f"/api/{what}", unsupported, methods=["POST", "DELETE"])
        for what in ("pull", "push", "create", "copy", "delete")
    ),
)

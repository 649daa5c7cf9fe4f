"""The catalog in the OpenAI list shape: GET /v1/models, GET /v1/models/{id} (an alias works too).

Hearth's extensions per model: `loaded` (in memory now), `source` (where its weights come from),
`dtype` / `device`: the ones in use while loaded, the configured ones (e.g. `auto`) otherwise,
`quantization` (the one in use while loaded, e.g. `gguf:Q4_1`, a GGUF file's own blocks; see
engine.model.gguf_native.describe; the configured one, e.g. `auto`, otherwise), and `task`: what the
model serves, `generate` (chat, completions, messages) or `embed` (/v1/embeddings), with `endpoints`
naming those routes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import Embedder, ModelConfig
from server.generation.read import resolve_model
from server.openai.schemas import Model, ModelList
from server.state import AppState, app_state

ENDPOINTS = {
    "generate": ["/v1/chat/completions", "/v1/completions", "/v1/messages"],
    "embed": ["/v1/embeddings"],
}


class CatalogModel(Model):
    source: str
    dtype: str
    device: str
    quantization: str
    task: str
    endpoints: list[str]


def _model(state: AppState, cfg: ModelConfig) -> CatalogModel:
    engine = state.registry.peek_served(cfg.id)
    dtype, device, quantization = cfg.dtype, cfg.device, cfg.quantization
    if isinstance(engine, Embedder):
        dtype, device = str(engine.dtype).removeprefix("torch."), str(engine.device)
    elif engine is not None:
        dtype, device, quantization = engine.info.dtype, engine.info.device, engine.info.quantization
    return CatalogModel(
        id=cfg.id,
        created=state.started_at,
        owned_by=cfg.owned_by,
        loaded=engine is not None,
        source=cfg.source if cfg.gguf_file is None else f"{cfg.source} ({cfg.gguf_file})",
        dtype=dtype,
        device=device,
        quantization=quantization,
        task=cfg.task,
        endpoints=ENDPOINTS[cfg.task],
    )


async def list_models(request: Request) -> Response:
    state = app_state(request)
    listing = ModelList(data=[_model(state, cfg) for cfg in state.registry.models()])
    return JSONResponse(listing.model_dump(serialize_as_any=True))  # keep CatalogModel's fields


async def get_model(request: Request) -> Response:
    state = app_state(request)
    cfg = resolve_model(state, request.path_params["model_id"])
    return JSONResponse(_model(state, cfg).model_dump())


routes = (
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
)

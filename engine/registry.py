"""The catalog's models by name, each loaded on first use into a started `Engine`."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from engine.catalog import Catalog
from engine.config import ModelConfig
from engine.engine import Engine
from engine.loader import LoadedModel, load_model

_log = logging.getLogger("hearth.registry")

EngineFactory = Callable[[LoadedModel, ModelConfig], Engine]


class UnknownModelError(KeyError):
    """No catalog model has this id or alias (answer 404)."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return f"model {self.model!r} does not exist"


class ModelLoadError(RuntimeError):
    """The model exists but failed to load; the failure is remembered and raised on every later call."""

    def __init__(self, model_id: str, message: str) -> None:
        super().__init__(f"model {model_id!r} failed to load: {message}")
        self.model_id = model_id
        self.message = message


class ModelRegistry:
    """Hands out one started `Engine` per catalog model, loading each at most once.

    Loads are serialized per model (two models may load at once); `aget` runs the load in a
    worker thread so the event loop is never blocked. `engine_factory` builds the engine from
    the loaded model (tests pass a fake); `attn_implementation` goes to `load_model`.
    """

    def __init__(
        self,
        catalog: Catalog,
        engine_factory: EngineFactory | None = None,
        *,
        attn_implementation: str | None = None,
    ) -> None:
        self.catalog = catalog
        self._factory: EngineFactory = engine_factory or Engine
        self._attn = attn_implementation
        self._locks = {cfg.id: threading.Lock() for cfg in catalog.models}  # one load at a time per model
        self._state = threading.Lock()  # guards _engines and _closed together
        self._engines: dict[str, Engine] = {}
        self._errors: dict[str, str] = {}
        self._closed = False

    def models(self) -> tuple[ModelConfig, ...]:
        """Every catalog model, loaded or not, in catalog order."""
        return self.catalog.models

    def resolve(self, name: str | None) -> ModelConfig:
        """The model named by id or alias; None or "" means the catalog's default."""
        if not name:
            return self.catalog.default_model
        cfg = self.catalog.resolve(name)
        if cfg is None:
            raise UnknownModelError(name)
        return cfg

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._engines

    def loaded_ids(self) -> list[str]:
        return list(self._engines)

    def get(self, name: str | None) -> Engine:
        """The started engine for `name`, loading it on first use (blocking; see `aget`).

        Raises `UnknownModelError`, or `ModelLoadError` if this or an earlier load failed.
        """
        cfg = self.resolve(name)
        engine = self._engines.get(cfg.id)
        if engine is not None:
            return engine
        with self._locks[cfg.id]:
            engine = self._engines.get(cfg.id)
            if engine is not None:
                return engine
            if cfg.id in self._errors:
                raise ModelLoadError(cfg.id, self._errors[cfg.id])
            if self._closed:
                raise ModelLoadError(cfg.id, "the server is shutting down")
            engine = self._load(cfg)
            with self._state:
                closed = self._closed
                if not closed:
                    self._engines[cfg.id] = engine
        if closed:  # shutdown() ran while this model was loading
            engine.shutdown()
            raise ModelLoadError(cfg.id, "the server is shutting down")
        return engine

    async def aget(self, name: str | None) -> Engine:
        """`get` in a worker thread; returns at once when the model is already loaded."""
        cfg = self.resolve(name)
        engine = self._engines.get(cfg.id)
        if engine is not None:
            return engine
        return await asyncio.to_thread(self.get, cfg.id)

    def shutdown(self) -> None:
        """Stop every started engine; later `get`s of unloaded models fail."""
        with self._state:
            self._closed = True
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.shutdown()

    def _load(self, cfg: ModelConfig) -> Engine:
        try:
            loaded = load_model(cfg, self.catalog.cache_dir, attn_implementation=self._attn)
            engine = self._factory(loaded, cfg)
            engine.start()
        except Exception as e:
            message = f"{type(e).__name__}: {e}"
            self._errors[cfg.id] = message
            _log.exception("model %s failed to load", cfg.id)
            raise ModelLoadError(cfg.id, message) from e
        return engine

"""The catalog's models by name: each loaded into a started `Engine` on first use (or at start-up),
unloaded when idle or when the memory budget needs room."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import cast

from engine.catalog.config import ModelConfig
from engine.catalog.errors import ModelLoadError, UnknownModelError, WrongTaskError
from engine.catalog.footprint import estimate_bytes
from engine.catalog.memory import engine_bytes, kv_bytes, release_memory
from engine.catalog.models_file import Catalog
from engine.catalog.recovery import Recovery, RecoveryPolicy
from engine.catalog.restarts import EngineRestarts
from engine.core.engine import Engine
from engine.core.faults import Faults
from engine.embed.embedder import Embedder, load_embedder
from engine.model.loader import LoadedModel, load_model

_log = logging.getLogger("hearth.registry")

EngineFactory = Callable[[LoadedModel, ModelConfig], Engine]
Served = Engine | Embedder  # what a loaded model is: a generation engine, or an embedding model (task: embed)
GB = 1024**3
# A model handed out this recently counts as in use: its request may not have reached the engine yet.
# (So no model unloads sooner than this after its last request, whatever its idle_unload_s.)
HANDOFF_S = 1.0


def _in_flight(engine: Served) -> bool:
    """Whether the engine has sequences running or waiting."""
    stats = engine.stats
    return stats.running + stats.waiting > 0


class ModelRegistry(EngineRestarts):
    """Hands out one started `Engine` per catalog model, loading each on first use.

    Loads are serialized per model, so concurrent first requests load it once (two models may
    load at once); `aget` runs the load in a worker thread so the event loop is never blocked.
    A model is unloaded (its engine stopped) after `idle_unload_s` without requests, or, least
    recently used first, when the loaded models exceed the catalog's `memory_budget_gb`; a model
    with requests in flight (running, waiting, or handed out within `HANDOFF_S`) never is. A model
    that fails to load fails with the same `ModelLoadError` until its retry time (`policy`), when
    a request loads it again; the others keep serving. A model whose engine thread dies is
    restarted on its loaded weights after a backoff, until it dies too often (see `Recovery`).
    `faults` injects failures for tests (engine.core.faults).
    `engine_factory` builds the engine from the loaded model (tests pass a fake);
    `attn_implementation` goes to `load_model`.
    """

    def __init__(
        self,
        catalog: Catalog,
        engine_factory: EngineFactory | None = None,
        *,
        attn_implementation: str | None = None,
        policy: RecoveryPolicy | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.catalog = catalog
        self.recovery = Recovery(policy)
        self._faults = faults or Faults()
        self._factory: EngineFactory = engine_factory or Engine
        self._attn = attn_implementation
        self._locks = {cfg.id: threading.Lock() for cfg in catalog.models}  # one load at a time per model
        self._state = threading.Lock()  # guards the dicts below and _closed
        self._engines: dict[str, Served] = {}
        self._used: dict[str, float] = {}  # model id -> when it was last handed out or seen busy
        self._sizes: dict[str, int] = {}  # model id -> bytes, measured at its last load
        self._keep_alive: dict[str, float] = {}  # model id -> idle seconds asked (keep_alive), until unloaded
        self._closed = False
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def budget_bytes(self) -> int | None:
        gb = self.catalog.memory_budget_gb
        return None if gb is None else int(gb * GB)

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

    def loaded_ids(self) -> list[str]:
        with self._state:
            return list(self._engines)

    def peek(self, model_id: str) -> Engine | None:
        """The engine of a loaded generation model, or None; never loads and does not count as a use."""
        served = self._engines.get(model_id)
        return None if isinstance(served, Embedder) else served

    def peek_served(self, model_id: str) -> Served | None:
        """`peek`, embedding models included."""
        return self._engines.get(model_id)

    def start(self) -> None:
        """Load the models marked `load: eager` (a failure is logged; that model's requests fail)
        and start the thread that unloads idle models. Blocking; see `astart`."""
        for cfg in self.catalog.models:
            if cfg.load == "eager":
                try:
                    self._get(cfg)
                except ModelLoadError:
                    pass  # logged by _load; its requests get the error
        self._ensure_reaper()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    def get(self, name: str | None) -> Engine:
        """The started engine for `name`, loading it on first use (blocking; see `aget`).

        Raises `UnknownModelError`, `WrongTaskError` for an embedding model, or `ModelLoadError` if
        this or an earlier load failed.
        """
        cfg = self.resolve(name)
        if cfg.task != "generate":
            raise WrongTaskError(cfg.id, cfg.task)
        return cast(Engine, self._get(cfg))  # a test's engine_factory may build a stand-in

    def get_embedder(self, name: str | None) -> Embedder:
        """The started `Embedder` of the `task: embed` model `name`, loading it on first use (blocking;
        see `aget_embedder`). Raises like `get`; `WrongTaskError` for a generation model."""
        cfg = self.resolve(name)
        if cfg.task != "embed":
            raise WrongTaskError(cfg.id, cfg.task)
        embedder = self._get(cfg)
        assert isinstance(embedder, Embedder)
        return embedder

    async def aget_embedder(self, name: str | None) -> Embedder:
        """`get_embedder` in a worker thread; returns at once when the model is already loaded."""
        cfg = self.resolve(name)
        served = self._take(cfg.id)
        if isinstance(served, Embedder):
            return served
        return await asyncio.to_thread(self.get_embedder, cfg.id)

    def _get(self, cfg: ModelConfig) -> Served:
        """`cfg`'s started engine or embedder, loading it first when needed."""
        engine = self._take(cfg.id)
        if engine is not None:
            return engine
        with self._locks[cfg.id]:
            engine = self._take(cfg.id)
            if engine is not None:
                return engine
            failure = self.recovery.failure(cfg.id)
            if failure is not None and failure.retry_in() > 0:
                raise ModelLoadError(cfg.id, failure.describe(), failure.retry_in())
            if self._closed:
                raise ModelLoadError(cfg.id, "the server is shutting down")
            need = self._sizes.get(cfg.id) or estimate_bytes(cfg, self.catalog.cache_dir) or 0
            self._check_budget(cfg.id, need)
            self._make_room(cfg.id, need)
            engine = self._load(cfg)
            size = engine_bytes(engine)
            with self._state:
                closed = self._closed
                if not closed:
                    self._engines[cfg.id] = engine
                    self._sizes[cfg.id] = size
                    self._used[cfg.id] = time.monotonic()
        if closed:  # shutdown() ran while this model was loading
            engine.shutdown()
            raise ModelLoadError(cfg.id, "the server is shutting down")
        kv = kv_bytes(engine)
        loaded_ids = ", ".join(self.loaded_ids())
        _log.info("model %s is loaded (%.2f GB: %.2f GB weights, %.2f GB KV cache at most; loaded: %s)",
                  cfg.id, size / GB, (size - kv) / GB, kv / GB, loaded_ids)  # fmt: skip
        self._make_room(cfg.id, 0)
        self._ensure_reaper()
        return engine

    def keep_alive(self, model_id: str, seconds: float) -> None:
        """Unload `model_id` after `seconds` without requests (0: as soon as it is idle; `math.inf`:
        never), instead of its `idle_unload_s`, until it next unloads (Ollama's `keep_alive`)."""
        with self._state:
            self._keep_alive[model_id] = seconds
        self._ensure_reaper()

    def idle_limit(self, model_id: str) -> float | None:
        """Seconds without requests after which `model_id` unloads; None: never."""
        seconds = self._keep_alive.get(model_id)
        if seconds is None:
            cfg = self.catalog.resolve(model_id)
            return None if cfg is None else cfg.idle_unload_s
        return None if math.isinf(seconds) else seconds

    def expires_in(self, model_id: str) -> float | None:
        """Seconds until a loaded model, kept idle, unloads for idleness; None: never."""
        limit = self.idle_limit(model_id)
        if limit is None:
            return None
        return max(0.0, limit - (time.monotonic() - self._used.get(model_id, time.monotonic())))

    def loaded_bytes(self, model_id: str) -> int | None:
        """The memory a loaded model holds (measured at its load); None when it is not loaded."""
        return self._sizes.get(model_id) if model_id in self._engines else None

    async def aget(self, name: str | None) -> Engine:
        """`get` in a worker thread; returns at once when the model is already loaded."""
        cfg = self.resolve(name)
        if cfg.task != "generate":
            raise WrongTaskError(cfg.id, cfg.task)
        engine = self._take(cfg.id)
        if engine is not None:
            return cast(Engine, engine)
        return await asyncio.to_thread(self.get, cfg.id)

    def unload(self, model_id: str, reason: str = "asked") -> bool:
        """Stop a loaded model's engine and free its memory, unless it has requests in flight.

        Returns whether it was unloaded; it loads again on its next request.
        """
        with self._state:
            engine = self._engines.get(model_id)
            if engine is None or self._busy(model_id, engine, time.monotonic()):
                return False
            del self._engines[model_id]
            self._keep_alive.pop(model_id, None)
        engine.shutdown()
        del engine
        release_memory()
        _log.info("unloaded model %s (%s; %.2f GB freed)", model_id, reason, self._sizes[model_id] / GB)
        return True

    def sweep(self) -> list[str]:
        """Unload the models idle for their `idle_unload_s`, then enforce the memory budget; returns
        the ids unloaded. Run by the reaper thread about once a second."""
        now = time.monotonic()
        unloaded = []
        for cfg in self.catalog.models:
            engine = self._engines.get(cfg.id)
            limit = self.idle_limit(cfg.id)
            if engine is None or limit is None:
                continue
            with self._state:
                if _in_flight(engine):
                    self._used[cfg.id] = now  # idle time counts from the end of the last request
                    continue
                idle = now - self._used[cfg.id]
            if idle >= limit and self.unload(cfg.id, f"idle for {idle:.0f} s"):
                unloaded.append(cfg.id)
        return unloaded + self._make_room(None, 0)

    def shutdown(self) -> None:
        """Stop every started engine and the reaper; later `get`s of unloaded models fail."""
        self._stop.set()
        with self._state:
            self._closed = True
            engines = list(self._engines.values())
            self._engines.clear()
        for engine in engines:
            engine.shutdown()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(timeout=5)

    def sizes(self) -> dict[str, int]:
        """Bytes each loaded model holds (weights and KV cache, as measured at its load)."""
        with self._state:
            return {i: self._sizes[i] for i in self._engines}

    def _check_budget(self, model_id: str, need: int) -> None:
        """Refuse, before loading, a model that alone would not fit `memory_budget_gb`."""
        budget = self.budget_bytes
        if budget is not None and need > budget:
            raise ModelLoadError(
                model_id,
                f"it needs about {need / GB:.2f} GB (weights and KV cache), more than memory_budget_gb "
                f"{budget / GB:.2f}; lower its kv_cache_tokens or max_context, quantize it, or raise the "
                "budget",
            )

    def _take(self, model_id: str) -> Served | None:
        """The loaded engine of `model_id`, marked as used now; None when not loaded."""
        with self._state:
            engine = self._engines.get(model_id)
            if engine is not None:
                self._used[model_id] = time.monotonic()
            return engine

    def _busy(self, model_id: str, engine: Served, now: float) -> bool:
        """Whether a model has requests in flight or just handed out (call with `_state` held)."""
        return _in_flight(engine) or now - self._used.get(model_id, 0.0) < HANDOFF_S

    def _make_room(self, keep: str | None, incoming: int) -> list[str]:
        """Unload least recently used idle models (never `keep`) until the loaded ones plus
        `incoming` bytes fit the budget; returns the ids unloaded."""
        budget = self.budget_bytes
        if budget is None:
            return []
        unloaded: list[str] = []
        while True:
            with self._state:
                loaded = sum(self._sizes[i] for i in self._engines)
                if loaded + incoming <= budget:
                    return unloaded
                now = time.monotonic()
                idle = [i for i, e in self._engines.items() if i != keep and not self._busy(i, e, now)]
            if not idle:
                if keep is not None:
                    _log.warning(
                        "memory budget %.2f GB exceeded (%.2f GB loaded, %.2f GB coming); the other models "
                        "have requests in flight and are unloaded once idle",
                        budget / GB,
                        loaded / GB,
                        incoming / GB,
                    )
                return unloaded
            victim = min(idle, key=lambda i: self._used.get(i, 0.0))
            if self.unload(victim, f"memory budget {budget / GB:.2f} GB"):
                unloaded.append(victim)

    def _ensure_reaper(self) -> None:
        """Start the idle/budget thread once, if any model can be unloaded by time or budget."""
        wanted = self.budget_bytes is not None or any(c.idle_unload_s for c in self.catalog.models)
        wanted = wanted or bool(self._keep_alive)
        with self._state:
            if not wanted or self._reaper is not None or self._closed:
                return
            self._reaper = threading.Thread(target=self._reap, name="model-reaper", daemon=True)
        self._reaper.start()

    def _reap(self) -> None:
        idle_times = [c.idle_unload_s for c in self.catalog.models if c.idle_unload_s]
        tick = max(0.1, min([1.0, *(t / 4 for t in idle_times)]))
        while not self._stop.wait(tick):
            try:
                self.sweep()
            except Exception:  # the reaper must keep running; the next tick tries again
                _log.exception("unloading idle models failed")

    def _load(self, cfg: ModelConfig) -> Served:
        started = time.monotonic()
        try:
            self._faults.check_load(cfg.id)
            engine: Served
            if cfg.task == "embed":
                engine = load_embedder(cfg, self.catalog.cache_dir)
            else:
                loaded = load_model(cfg, self.catalog.cache_dir, attn_implementation=self._attn)
                generator = self._factory(loaded, cfg)
                self._watch(cfg.id, generator)
                engine = generator
            engine.start()
            if not engine.alive:
                raise RuntimeError(engine.dead_reason or "the engine thread did not start")
        except Exception as e:
            failure = self.recovery.load_failed(cfg.id, f"{type(e).__name__}: {e}")
            _log.exception("model %s failed to load (retried after %.0f s)", cfg.id, failure.retry_in())
            raise ModelLoadError(cfg.id, failure.describe(), failure.retry_in()) from e
        self.recovery.loaded(cfg.id)
        _log.info("model %s ready in %.1f s", cfg.id, time.monotonic() - started)
        return engine

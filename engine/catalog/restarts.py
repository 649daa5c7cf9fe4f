"""The registry's side of engine deaths: hook each new engine, restart a dead one on its loaded weights
after the backoff `Recovery` decides, or drop the model when it died too often; and the per-model
state /health reports. A mixin of `ModelRegistry` (kept apart so the registry stays small)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from engine.catalog.memory import release_memory
from engine.catalog.models_file import Catalog
from engine.catalog.recovery import Recovery
from engine.core.engine import Engine
from engine.core.faults import Faults

if TYPE_CHECKING:
    from engine.embed.embedder import Embedder

_log = logging.getLogger("hearth.registry")


class EngineRestarts:
    catalog: Catalog
    recovery: Recovery
    _faults: Faults
    _closed: bool
    _engines: dict[str, Engine | Embedder]  # embedding models (task: embed) are never restarted
    _locks: dict[str, threading.Lock]
    _state: threading.Lock

    def _watch(self, model_id: str, engine: Engine) -> None:
        """Hook a new engine's death (restart it) and its injected faults."""
        engine.on_death = lambda reason: self._engine_died(model_id, engine, reason)
        engine.fault = self._faults.step_hook(model_id)

    def _engine_died(self, model_id: str, engine: Engine, reason: str) -> None:
        """On the dying engine thread: restart it after a backoff, or, when it died too often, drop
        the model (unavailable until the window passes; then a request loads it afresh)."""
        if self._closed or self._engines.get(model_id) is not engine:
            return
        delay = self.recovery.died(model_id, reason)
        if delay is None:
            _log.error("model %s: engine died too often; unavailable: %s", model_id, reason)
            self._drop(model_id, engine)
            return
        _log.warning("model %s: engine died; restarting in %.1f s", model_id, delay)
        timer = threading.Timer(delay, self._restart, (model_id, engine))
        timer.name, timer.daemon = f"restart-{model_id}", True
        timer.start()

    def _restart(self, model_id: str, engine: Engine) -> None:
        with self._locks[model_id]:
            if self._closed or self._engines.get(model_id) is not engine:
                self.recovery.restarted(model_id, ok=False)
                return
            try:
                engine.restart()
                ok = engine.alive
            except Exception:
                _log.exception("model %s: restarting the engine failed", model_id)
                ok = False
        self.recovery.restarted(model_id, ok)
        if ok:
            _log.info("model %s: engine restarted (%d so far)", model_id, self.recovery.restarts(model_id))
        elif self.recovery.failure(model_id) is None and not engine.alive:
            self.recovery.load_failed(model_id, engine.dead_reason or "the engine did not restart")
            self._drop(model_id, engine)

    def _drop(self, model_id: str, engine: Engine) -> None:
        """Forget a dead engine (its thread has ended) and free its memory."""
        with self._state:
            if self._engines.get(model_id) is engine:
                del self._engines[model_id]
        release_memory()

    def health(self) -> dict[str, dict[str, object]]:
        """Each model that is loaded, restarting or unavailable: its state (see `Recovery.state`)."""
        out = {}
        for cfg in self.catalog.models:
            state = self.recovery.state(cfg.id)
            engine = self._engines.get(cfg.id)
            if engine is not None and state["state"] == "ok" and not engine.alive:
                state = {**state, "state": "dead", "reason": engine.dead_reason}
            if engine is not None or state["state"] != "ok":
                out[cfg.id] = {"loaded": engine is not None, **state}
        return out

"""Injected faults, for tests and `scripts/soak` only: `$HEARTH_FAULTS` names engine steps that raise
and model loads that fail, so recovery is tested through a real server, not by patching it.

Grammar: specs separated by `;`, each `KIND:key=value,...`:

- `step_raise:model=ID,after=N[,times=K][,every=M]`: the step after the model's first N steps
  (counted over its engine restarts) raises `InjectedFault` outside the per-row isolation, so the
  engine thread dies; K such steps in all (default 1), each M steps after the one before (default 1:
  the next step with work).
- `load_fail:model=ID[,times=K]`: the model's first K loads (default 1) fail.

Never set it in production: it exists to prove that faults are survived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

FAULTS_ENV = "HEARTH_FAULTS"
KINDS = ("step_raise", "load_fail")


class InjectedFault(RuntimeError):
    """A fault asked for by `$HEARTH_FAULTS`."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    model: str
    after: int = 0
    times: int = 1
    every: int = 1


def parse_faults(text: str) -> tuple[FaultSpec, ...]:
    """The specs of a `$HEARTH_FAULTS` value; `ValueError` naming what is wrong."""
    specs = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        kind, _, rest = part.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{FAULTS_ENV}: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        fields: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key not in ("model", "after", "times", "every"):
                raise ValueError(f"{FAULTS_ENV}: bad field {item!r} in {part!r}")
            fields[key] = value
        if not fields.get("model"):
            raise ValueError(f"{FAULTS_ENV}: {part!r} names no model=")
        try:
            numbers = {k: int(v) for k, v in fields.items() if k != "model"}
        except ValueError:
            raise ValueError(f"{FAULTS_ENV}: after, times and every are integers in {part!r}") from None
        if any(v < (1 if k == "every" else 0) for k, v in numbers.items()):
            raise ValueError(f"{FAULTS_ENV}: after and times must be >= 0, every >= 1 in {part!r}")
        specs.append(FaultSpec(kind, fields["model"], **numbers))
    return tuple(specs)


class Faults:
    """The faults of one server: counts steps and loads per model (across engine restarts)."""

    def __init__(self, specs: tuple[FaultSpec, ...] = ()) -> None:
        self.specs = specs
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}
        self._loads: dict[str, int] = {}

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        return cls(parse_faults(text or ""))

    def step_hook(self, model_id: str) -> Callable[[], None] | None:
        """What the engine calls before each step with work; None when no fault concerns the model."""
        specs = [s for s in self.specs if s.kind == "step_raise" and s.model == model_id]
        if not specs:
            return None

        def hook() -> None:
            with self._lock:
                n = self._steps[model_id] = self._steps.get(model_id, 0) + 1
            for s in specs:
                k = n - s.after - 1  # 0 for the first faulty step
                if k >= 0 and k % s.every == 0 and k // s.every < s.times:
                    raise InjectedFault(f"injected fault: step {n} of {model_id} raised ({FAULTS_ENV})")

        return hook

    def check_load(self, model_id: str) -> None:
        """Raise `InjectedFault` when this load of the model is one asked to fail."""
        specs = [s for s in self.specs if s.kind == "load_fail" and s.model == model_id]
        if not specs:
            return
        with self._lock:
            n = self._loads[model_id] = self._loads.get(model_id, 0) + 1
        if any(n <= s.times for s in specs):
            raise InjectedFault(f"injected fault: load {n} of {model_id} failed ({FAULTS_ENV})")

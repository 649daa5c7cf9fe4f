"""`python -m tests.faulty_server ARGS`: `python -m server ARGS` with a fault injected into a real server.

`$HEARTH_TEST_DOOMED_MODEL` names a catalog model whose engine thread dies on its first step with work
(the step raises outside the per-request isolation), so `/health`, `/metrics` and the routes can be
checked against a real dead engine. The only fault hook of the test suite; it patches nothing else.
"""

from __future__ import annotations

import os

from engine import Engine
from server.cli.main import main

DOOMED_ENV = "HEARTH_TEST_DOOMED_MODEL"
FAULT = "injected fault: the engine step raised"


def install(model_id: str) -> None:
    """Make the step of `model_id`'s engine raise (other models' engines run as usual)."""
    real_step = Engine.step

    def step(self: Engine) -> None:
        if self.config.id == model_id and self.scheduler.has_work():
            raise RuntimeError(FAULT)
        real_step(self)

    Engine.step = step  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ[DOOMED_ENV])
    main()

"""What the registry raises when a model cannot be served: unknown, of the other task, or not loadable."""

from __future__ import annotations


class UnknownModelError(KeyError):
    """No catalog model has this id or alias (answer 404)."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return f"model {self.model!r} does not exist"


class WrongTaskError(ValueError):
    """The model exists but serves another task (an embedding model asked to generate, or the reverse)."""

    def __init__(self, model_id: str, task: str) -> None:
        what = "an embedding model" if task == "embed" else "a generation model"
        what += f" (task: {task})"
        super().__init__(f"model {model_id!r} is {what}")
        self.model_id = model_id
        self.task = task


class ModelLoadError(RuntimeError):
    """The model exists but cannot be served now: its load failed, or its engine failed too often.
    The failure is remembered until `retry_in` seconds have passed (None: not retried)."""

    def __init__(self, model_id: str, message: str, retry_in: float | None = None) -> None:
        super().__init__(f"model {model_id!r} failed to load: {message}")
        self.model_id = model_id
        self.message = message
        self.retry_in = retry_in

"""`keep_alive`: how long a model stays loaded after a request, as Ollama reads it, applied to the registry.

A number is seconds; a string is a Go duration (`"5m"`, `"1h30m"`, `"300ms"`) or a plain number of
seconds; a negative value keeps the model loaded for good; `0` unloads it once its requests are
done. The value replaces the model's `idle_unload_s` until the model next unloads (then the catalog's
applies again); a request without `keep_alive` leaves the current setting as it is.
"""

from __future__ import annotations

import math
import re

from engine import ModelRegistry
from server.http.errors import APIError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")


def keep_alive_seconds(value: float | int | str | None) -> float | None:
    """Seconds to stay loaded once idle (`math.inf`: for good); None when not given. 400 when unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        value = _parse(value.strip())
    if value < 0:
        return math.inf
    return float(value)


def _parse(text: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    parts = _PART.findall(rest)
    if not rest or "".join(number + unit for number, unit in parts) != rest:
        raise APIError(400, f'keep_alive: invalid duration "{text}" (e.g. "5m", "1h30m", 300, -1)')
    return sign * sum(float(number) * _UNITS[unit] for number, unit in parts)


def apply_keep_alive(registry: ModelRegistry, model_id: str, seconds: float | None) -> None:
    """Set how long `model_id` stays loaded once idle (None: leave it as it is)."""
    if seconds is not None:
        registry.keep_alive(model_id, seconds)

"""The engine's `Logprob` entries in the two OpenAI shapes: chat (`content[]`) and legacy completions.

Values are what the engine reports: log_softmax of the logits after logit_bias, penalties and
temperature (temperature 1 for greedy requests), before top-k, top-p and min-p filtering.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from engine import Logprob

FLOOR = -9999.0  # what OpenAI reports for an impossible token; JSON has no -Infinity


def _value(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


def _token(entry: Logprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": _value(entry.logprob), "bytes": list(entry.bytes)}


def chat_logprobs(entries: Iterable[Logprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion (or of one chunk)."""
    content = [{**_token(e), "top_logprobs": [_token(t) for t in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: Iterable[Logprob], offset: int) -> dict[str, Any]:
    """`choices[].logprobs` of a legacy completion: parallel lists; `offset` is the text position of the
    first token (the length of the text before it). `top_logprobs` maps token text to logprob and also
    holds the chosen token, as OpenAI's does."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e in entries:
        out["tokens"].append(e.token)
        out["token_logprobs"].append(_value(e.logprob))
        top = {t.token: _value(t.logprob) for t in e.top}
        top.setdefault(e.token, _value(e.logprob))
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(e.token)
    return out

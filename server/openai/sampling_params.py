"""A request body's sampling fields as the engine's `SamplingParams`, with the checks that need the model."""

from __future__ import annotations

from typing import Any

from engine import SamplingParams
from server.http.errors import APIError
from server.openai.schemas import GenerationRequest
from server.output.response_format import check_grammar, output_grammar

# A `top_k` at least this large keeps every token of any vocabulary; larger ones would overflow a tensor.
MAX_TOP_K = 2**31 - 1


def top_k(value: int | None) -> int:
    """`top_k` for the engine: None, 0 and -1 are off; a value past any vocabulary keeps every token."""
    return min(max(value or 0, 0), MAX_TOP_K)


def choice_count(n: int | None, max_n: int) -> int:
    """The number of choices asked for; 400 `n` above the server's cap."""
    count = 1 if n is None else n
    if count > max_n:
        raise APIError(400, f"n must be at most {max_n} on this server", param="n")
    return count


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; 400 `logit_bias` for an id past the vocabulary."""
    pairs = tuple((int(key), float(value)) for key, value in (bias or {}).items())
    for token, _ in pairs:
        if token >= vocab_size:
            message = f"token id {token} in logit_bias is out of range (the vocabulary has {vocab_size})"
            raise APIError(400, message, param="logit_bias")
    return pairs


def sampling_params(
    body: GenerationRequest, max_tokens: int, engine: Any, logprobs: bool = False, top_logprobs: int = 0
) -> SamplingParams:
    """The engine's settings for a request (OpenAI defaults: temperature 1, top_p 1, no penalties);
    400 `response_format` for a schema the engine cannot compile."""
    grammar = output_grammar(body.response_format, body.json_mode)
    check_grammar(engine, grammar, "response_format" if body.response_format is not None else "json_mode")
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k(body.top_k),
        min_p=body.min_p or 0.0,
        max_tokens=max_tokens,
        stop=body.stop_strings,
        ignore_eos=bool(body.ignore_eos),
        seed=body.seed,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        logit_bias=logit_bias(body.logit_bias, engine.vocab_size),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        grammar=grammar,
    )

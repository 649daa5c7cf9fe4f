"""OpenAI sampling fields as the engine's `SamplingParams`, with the checks that need the model."""

from __future__ import annotations

from typing import Any

from engine import (
    SamplingParams,
)
from server.generation.params import logit_bias, top_k
from server.openai.schemas import GenerationRequest
from server.output.response_format import check_grammar, output_grammar


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

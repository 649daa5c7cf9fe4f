"""Step 2: the request's budget and sampling fields as the engine's parameters, shared by every surface."""

from __future__ import annotations

from server.http.errors import APIError


def completion_budget(
    prompt_tokens: int, max_tokens: int | None, max_context: int, param: str, max_param: str = "max_tokens"
) -> int:
    """`max_tokens`, or what is left of the context window when None; 400 `context_length_exceeded` if
    the prompt plus the completion do not fit. `param` names the field holding the prompt (blamed when
    the prompt alone fills the window), `max_param` the field that asked for too many tokens."""
    budget = max_context - prompt_tokens if max_tokens is None else max_tokens
    if budget < 1 or prompt_tokens + budget > max_context:
        if max_tokens is None:
            detail = f"However, your prompt is {prompt_tokens} tokens, which leaves no room for a completion."
        else:
            detail = (
                f"However, you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"prompt, {max_tokens} for the completion). Reduce the length of the prompt or completion."
            )
        raise APIError(
            400,
            f"This model's maximum context length is {max_context} tokens. {detail}",
            param=param if max_tokens is None or prompt_tokens >= max_context else max_param,
            code="context_length_exceeded",
        )
    return budget


def choice_count(n: int | None, max_n: int) -> int:
    """The number of choices asked for; 400 `n` above the server's cap."""
    count = 1 if n is None else n
    if count > max_n:
        raise APIError(400, f"n must be at most {max_n} on this server", param="n")
    return count


def top_k(value: int | None) -> int:
    """`top_k` for the engine: None, 0 and -1 are off; a value past any vocabulary keeps every token."""
    return min(max(value or 0, 0), MAX_TOP_K)


MAX_TOP_K = 2**31 - 1


def logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as (token id, bias) pairs; 400 `logit_bias` for an id past the vocabulary."""
    pairs = tuple((int(key), float(value)) for key, value in (bias or {}).items())
    for token, _ in pairs:
        if token >= vocab_size:
            message = f"token id {token} in logit_bias is out of range (the vocabulary has {vocab_size})"
            raise APIError(400, message, param="logit_bias")
    return pairs

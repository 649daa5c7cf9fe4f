"""Reasoning (`<think>…</think>`): what a request asks of the template, and what an answer spent on it.

Requests: `thinking` (`{"type": "enabled" | "disabled", "budget_tokens": N}`), `reasoning_effort`
and `chat_template_kwargs` become keyword arguments of the chat template (`enable_thinking`,
`reasoning_effort`, anything else a template takes); a template ignores those it does not use.
Answers: a model reasons when its prompt ends by opening `<think>` (the template did it) or its
template knows the tag; `server.output.parser` then splits the output into reasoning and answer,
and `reasoning_tokens` counts the generated tokens spent before `</think>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.output.parser import THINK_CLOSE, THINK_OPEN
from server.output.tool_grammar import Thinking

# Keyword arguments of `apply_chat_template` itself, which `chat_template_kwargs` may not set.
RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


def template_kwargs(
    enabled: bool | None, effort: str | None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The template's reasoning switches: `enable_thinking` when the request turned thinking on or
    off, `reasoning_effort` when given, then `extra` (`chat_template_kwargs`, which wins)."""
    kwargs: dict[str, Any] = {}
    if enabled is not None:
        kwargs["enable_thinking"] = enabled
    if effort is not None:
        kwargs["reasoning_effort"] = effort
        if enabled is None:
            kwargs["enable_thinking"] = effort not in ("none", "minimal")
    kwargs.update({k: v for k, v in (extra or {}).items() if k not in RESERVED_KWARGS})
    return kwargs


def opens_thinking(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the prompt ends inside an open `<think>` (the template starts the reasoning)."""
    tail = tokenizer.decode(list(prompt_ids[-8:]), skip_special_tokens=False)
    return str(tail).rstrip().endswith(THINK_OPEN)


def template_thinks(tokenizer: Any) -> bool:
    """Whether the chat template knows the `<think>` tag (its model reasons in that form)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    return THINK_OPEN in str(template)


def thinking_plan(
    tokenizer: Any, prompt_ids: Sequence[int], enabled: bool | None, budget: int | None
) -> Thinking | None:
    """How the answer's reasoning part is shaped: None when the model does not reason here (its
    template knows no `<think>`, or thinking is off and the prompt did not open it)."""
    opened = opens_thinking(tokenizer, prompt_ids)
    if not opened and (enabled is False or not template_thinks(tokenizer)):
        return None
    return Thinking(opened=opened, budget=budget if enabled is not False else None)


def reasoning_tokens(tokenizer: Any, token_ids: Sequence[int], text: str, opened: bool) -> int:
    """How many of the generated `token_ids` (whose text is `text`) come before the reasoning ends:
    before `</think>` (all of them while it is still open), counted from `<think>` unless the prompt
    opened it. 0 without reasoning."""
    start = 0
    if not opened:
        start = text.find(THINK_OPEN)
        if start < 0:
            return 0
    end = text.find(THINK_CLOSE, start)
    if end < 0:
        return len(token_ids)
    return _tokens_within(tokenizer, token_ids, end) - _tokens_within(tokenizer, token_ids, start)


def _tokens_within(tokenizer: Any, token_ids: Sequence[int], length: int) -> int:
    """The most leading tokens whose text fits in the first `length` characters (binary search)."""
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(list(token_ids[:mid]), skip_special_tokens=True)) <= length:
            lo = mid
        else:
            hi = mid - 1
    return lo

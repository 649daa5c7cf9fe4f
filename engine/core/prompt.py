"""Turns chat messages into prompt token ids with the model's chat template."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2


class ChatTemplateError(ValueError):
    """The chat template is missing or failed on these messages (a client error: answer 400)."""


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], **template_kwargs: Any) -> list[int]:
    """Apply the tokenizer's chat template to `messages`, ending with the assistant's turn.

    Content given as a list of `{"type": "text", "text": ...}` parts is joined into one string
    first, since many templates concatenate `message['content']` as a string. `template_kwargs`
    go to `apply_chat_template` (e.g. `tools=...`, or `add_generation_prompt=False`).
    Raises `ChatTemplateError` when there is no template, a part is not text, or the template fails.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("this model has no chat template; use the completions endpoint instead")
    flat = [_flatten(i, message) for i, message in enumerate(messages)]
    kwargs: dict[str, Any] = {"add_generation_prompt": True, **template_kwargs}
    try:
        out = tokenizer.apply_chat_template(flat, tokenize=True, **kwargs)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from e
    except (TypeError, ValueError, KeyError) as e:
        raise ChatTemplateError(f"chat template could not render these messages: {e}") from e
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    ids = list(out)
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(t) for t in ids]


def _flatten(index: int, message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `message` whose content is a plain string (None becomes "")."""
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(
                    f"messages[{index}].content: only text parts are supported, got {kind!r}"
                )
            texts.append(str(part.get("text", "")))
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise ChatTemplateError(f"messages[{index}].content must be a string or a list of text parts")
    return {**message, "content": content}

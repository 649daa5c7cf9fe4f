"""scripts/bench's long-prompt level (`--long-prompt N`): the time to the first token of a prompt of
~N tokens, one request at a time, `max_tokens` 1. Each prompt opens with a fresh nonce in its system
message, so no server can reuse an earlier one's cache: it measures prefill, what a user waits for
after pasting a document."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from bench_client import LevelResult, Target, percentile, run_level

SENTENCES = [
    "The river bends twice before it reaches the old mill at the edge of town.",
    "Engineers measured the bridge every spring and wrote the figures in a ledger.",
    "A lantern hung by the door, and its light fell across the wet cobblestones.",
    "Nobody remembered who had planted the orchard, but everyone ate its apples.",
]
TOKENS_PER_SENTENCE = 16  # SmolLM2's tokenizer, measured on the sentences above


def long_fields(tokens: int, i: int) -> dict[str, Any]:
    """The i-th long request: a numbered document of ~`tokens` tokens, then a one-token answer."""
    n = max(1, tokens // TOKENS_PER_SENTENCE)
    text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(n))
    system = f"Request {uuid.uuid4().hex[:12]}-{i}: you summarize documents."  # first: nothing reusable
    prompt = f"{text}\n\nSummarize the document in one word."
    return {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        "max_tokens": 1,
    }


def long_level(target: Target, tokens: int, repeats: int = 3) -> LevelResult:
    """`repeats` long prompts, one after the other."""
    return run_level(target, 1, repeats, None, lambda i: long_fields(tokens, i))


def long_table(servers: Sequence[tuple[str, LevelResult]], peer: str | None) -> str:
    """Prompt tokens and TTFT (median) per server, with the ratio to the peer (>1: faster than it)."""
    ttfts = {label: percentile([r.ttft for r in lv.good if r.ttft is not None], 50) for label, lv in servers}
    lines = ["### Long prompt: time to first token", ""]
    lines += ["| server | prompt tokens | TTFT p50 s | speed vs peer |", "|---|---:|---:|---:|"]
    for label, level in servers:
        prompts = [r.prompt_tokens for r in level.good if r.prompt_tokens]
        ratio = ttfts[peer] / ttfts[label] if peer in ttfts and ttfts[label] else None
        tokens = round(sum(prompts) / len(prompts)) if prompts else "–"
        lines.append(
            f"| {label} | {tokens} | {ttfts[label]:.3f} | {'–' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)

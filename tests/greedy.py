"""Greedy decoding two ways, for device comparisons: plain transformers, and Hearth's `Engine`.

`hf_greedy` is the reference: a full forward pass per new token (no KV cache, no batching),
so it depends on nothing Hearth does. `engine_greedy` serves the same prompts through a real
`Engine` (scheduler, slot KV cache, slot attention, sampling) on any device and dtype.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine.catalog.config import ModelConfig
from engine.core.engine import Engine
from engine.core.request import SamplingParams
from engine.model.loader import load_model

QUESTIONS = [
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Explain gravity to a child in a few simple sentences, please.",
    "List three fruits.",
    "What is 2+2?",
    "Tell me a long story about a dragon who lived under a mountain.",
    "How do computers work?",
    "Describe a sunset in detail.",
]


def prompts(model_dir: Path, count: int = len(QUESTIONS)) -> list[list[int]]:
    """Token ids of the first `count` questions, rendered with the model's chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    out = []
    for q in QUESTIONS[:count]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


@torch.inference_mode()
def hf_greedy(
    model_dir: Path,
    prompt_ids: list[list[int]],
    n: int,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[list[int]]:
    """`n` greedy tokens per prompt, one full forward pass per token (transformers' default attention)."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    outs = []
    for ids in prompt_ids:
        seq = torch.tensor([ids], device=device)  # [1, L]
        for _ in range(n):
            logits = model(input_ids=seq, use_cache=False, logits_to_keep=1).logits[0, -1]  # [V]
            seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
        outs.append(seq[0, len(ids) :].tolist())
    return outs


@contextlib.contextmanager
def running_engine(
    model_dir: Path,
    device: str,
    dtype: str = "float32",
    max_batch: int = 8,
    max_context: int = 1024,
    graphs: bool | None = None,
    quantization: str = "none",
    kv_cache_tokens: int | None = None,
) -> Iterator[Engine]:
    """A started `Engine` over `model_dir`; shut down on exit. `graphs`: see `ModelRunner` (None: default)."""
    cfg = ModelConfig(
        id="random-llama",
        source=str(model_dir),
        dtype=dtype,
        device=device,
        max_context=max_context,
        max_batch_size=max_batch,
        quantization=quantization,
        kv_cache_tokens=kv_cache_tokens,
    )
    engine = Engine(load_model(cfg, model_dir), cfg)
    if graphs is not None:
        engine.runner.graphs_wanted = graphs
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown()


def engine_generate(
    engine: Engine, prompt_ids: list[list[int]], max_tokens: list[int], together: bool = True
) -> list[tuple[list[int], str]]:
    """Greedy (token ids, finish reason) per prompt: all submitted at once, or one after another."""

    async def one(i: int, ids: list[int], n: int) -> tuple[list[int], str]:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        tokens: list[int] = []
        finish = ""
        async for delta in engine.generate(ids, params, f"req-{i}"):
            tokens += delta.token_ids
            if delta.finish_reason is not None:
                finish = delta.finish_reason.value
        return tokens, finish

    async def main() -> list[tuple[list[int], str]]:
        jobs = [(i, ids, n) for i, (ids, n) in enumerate(zip(prompt_ids, max_tokens, strict=True))]
        if together:
            return list(await asyncio.gather(*(one(*job) for job in jobs)))
        return [await one(*job) for job in jobs]

    return asyncio.run(main())


def engine_greedy(
    model_dir: Path,
    prompt_ids: list[list[int]],
    n: int,
    device: str,
    dtype: str = "float32",
    graphs: bool | None = None,
) -> list[list[int]]:
    """`n` greedy tokens per prompt from a fresh `Engine`, all prompts in one batch."""
    batch = max(len(prompt_ids), 1)
    with running_engine(model_dir, device, dtype, max_batch=batch, graphs=graphs) as engine:
        return [tokens for tokens, _ in engine_generate(engine, prompt_ids, [n] * len(prompt_ids))]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first index where `a` and `b` differ (or where the shorter ends), None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def describe_divergence(name: str, got: list[list[int]], want: list[list[int]]) -> str:
    """One line per prompt: equal through n tokens, or the first divergent index and tokens there."""
    lines = []
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        i = first_divergence(g, w)
        if i is None:
            lines.append(f"{name} prompt {p}: equal for all {len(w)} tokens")
        else:
            lines.append(
                f"{name} prompt {p}: first divergence at token {i}: got {g[i : i + 4]}, want {w[i : i + 4]}"
            )
    return "\n".join(lines)


def chat_ids(engine: Engine, question: str) -> list[int]:
    """One user question through the engine's chat template, as token ids."""
    out: Any = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(out)


async def greedy_text(engine: Engine, ids: list[int], max_tokens: int, rid: str) -> str:
    """The engine's greedy answer to `ids` (request id `rid`); fails on an error delta."""
    text = ""
    async for delta in engine.generate(ids, SamplingParams(temperature=0.0, max_tokens=max_tokens), rid):
        assert delta.error is None, delta.error
        text += delta.text
    return text

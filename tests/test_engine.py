"""The engine driven directly with the real model: batch invariance, chunked prefill, prefix reuse, aborts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from engine import Engine, SamplingParams, load_catalog
from engine.core.blocks import BLOCK_SIZE
from engine.core.engine import EngineDeadError
from engine.core.scheduler import common_prefix
from engine.model.loader import load_model

ROOT = Path(__file__).resolve().parent.parent
LONG_SYSTEM = " ".join(f"Rule {i}: be kind, be brief and be accurate." for i in range(60))


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    catalog = load_catalog(ROOT / "models.yaml")
    cfg = catalog.default_model
    eng = Engine(load_model(cfg, catalog.cache_dir), cfg)
    eng.start()
    yield eng
    eng.shutdown()


def _prompt(engine: Engine, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    out = engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(out)


async def _run(
    engine: Engine, ids: list[int], max_tokens: int, rid: str, delay: float = 0.0
) -> tuple[str, int]:
    await asyncio.sleep(delay)
    text, cached = "", 0
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    async for d in engine.generate(ids, params, rid):
        assert d.error is None, d.error
        text += d.text
        cached = d.cached_tokens
    assert text
    return text, cached


def test_greedy_output_does_not_depend_on_the_batch(engine: Engine) -> None:
    prompts = [
        _prompt(engine, "Write a poem about autumn."),
        _prompt(engine, "Summarise the rules above.", system=LONG_SYSTEM),  # > prefill chunk: several steps
        _prompt(engine, "What is 7 times 8?"),
        _prompt(engine, "Describe the ocean."),
        _prompt(engine, "Name five animals that live in the forest and say one thing about each."),
    ]
    assert len(prompts[1]) > engine.config.prefill_chunk

    async def main() -> tuple[list[str], list[str]]:
        solo = [(await _run(engine, p, 24, f"solo{i}"))[0] for i, p in enumerate(prompts)]
        mixed = await asyncio.gather(  # staggered: newcomers' prefills join running decodes
            *[_run(engine, p, 24 + 4 * i, f"mix{i}", delay=0.09 * i) for i, p in enumerate(prompts)]
        )
        return solo, [t for t, _ in mixed]

    solo, mixed = asyncio.run(main())
    for i, (a, b) in enumerate(zip(solo, mixed, strict=True)):
        assert b.startswith(a), f"prompt {i} diverged:\n{a!r}\n{b!r}"


def test_shared_prefix_is_reused(engine: Engine) -> None:
    first = _prompt(engine, "What is the first rule?", system=LONG_SYSTEM)
    second = _prompt(engine, "What is the last rule?", system=LONG_SYSTEM)

    async def main() -> tuple[tuple[str, int], tuple[str, int]]:
        a = await _run(engine, first, 8, "p1")
        b = await _run(engine, second, 8, "p2")
        return a, b

    _, (_, cached_b) = asyncio.run(main())
    shared = common_prefix(first, second)
    assert shared > 500
    # everything the two prompts share came from the cache, in whole blocks
    assert cached_b == shared // BLOCK_SIZE * BLOCK_SIZE


def test_abandoned_request_frees_its_slot(engine: Engine) -> None:
    async def main() -> None:
        params = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
        gen = engine.generate(_prompt(engine, "Tell me a long story."), params, "gone")
        async for _ in gen:
            break
        await gen.aclose()
        for _ in range(600):
            if engine.stats.running == 0:
                return
            await asyncio.sleep(0.05)

    before = engine.stats.aborted
    asyncio.run(main())
    assert engine.stats.running == 0 and engine.stats.waiting == 0
    assert engine.stats.aborted == before + 1


def test_info_describes_the_loaded_model(engine: Engine) -> None:
    info = engine.info
    assert info.id == engine.config.id and info.max_context == engine.config.max_context
    assert info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert info.device == "cpu" and info.dtype in ("float32", "bfloat16")
    assert 130_000_000 < info.parameters < 140_000_000  # SmolLM2-135M
    assert info.vocab_size == engine.vocab_size and info.slots == engine.max_batch_size
    # the embedded GGUF runs from its own blocks: Q4_1 matrices, the Q8_0 embedding as int8
    assert info.quantization == "gguf:Q4_1,Q8_0>int8" and info.revision is None  # a GGUF has no commit hash


def test_prompt_over_the_context_window_is_refused(engine: Engine) -> None:
    async def main() -> None:
        params = SamplingParams(max_tokens=engine.max_context)
        async for _ in engine.generate([1, 2, 3], params, "too-long"):
            pass

    with pytest.raises(ValueError, match="context window"):
        asyncio.run(main())


def _beside_a_bad_request(
    engine: Engine, patch: Callable[[], Callable[[], None]], logprobs: bool
) -> tuple[str, str | None, str]:
    """(a greedy answer alone, the error that ended request "bad", the same answer batched beside
    "bad" while `patch()` is in force; it returns its own undo). `logprobs`: "bad" asks for them."""
    good_ids = _prompt(engine, "Describe the ocean.")

    async def bad() -> str | None:
        params = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True, logprobs=logprobs)
        async for d in engine.generate(_prompt(engine, "Tell me a joke."), params, "bad"):
            if d.finish_reason is not None:
                return d.error
        return None

    async def main() -> tuple[str, str | None, str]:
        solo = (await _run(engine, good_ids, 30, "good-solo"))[0]
        undo = patch()
        try:
            (good, _), error = await asyncio.gather(_run(engine, good_ids, 30, "good"), bad())
        finally:
            undo()
        return solo, error, good

    return asyncio.run(main())


def test_a_failing_request_leaves_the_rest_of_the_batch_running(engine: Engine) -> None:
    real = engine.sampler

    def faulty(logits, seqs):  # type: ignore[no-untyped-def]
        if any(s.request_id == "bad" for s in seqs):
            raise RuntimeError("injected sampling fault")
        return real(logits, seqs)

    def patch() -> Callable[[], None]:
        engine.sampler = faulty  # type: ignore[method-assign]
        return lambda: setattr(engine, "sampler", real)

    # logprobs: a batch of plain greedy rows never calls the sampler
    solo, error, good = _beside_a_bad_request(engine, patch, logprobs=True)
    assert error is not None and "injected sampling fault" in error
    assert good == solo
    deadline = time.monotonic() + 30
    while engine.stats.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.alive and engine.stats.running == 0


@pytest.mark.parametrize("logprobs", [False, True], ids=["plain-greedy", "through-the-sampler"])
def test_non_finite_logits_fail_their_own_request_only(engine: Engine, logprobs: bool) -> None:
    """A row whose logits hold a NaN ends its request with an error; its neighbour in the batch goes
    on unchanged. Plain greedy rows take their tokens from the finite check's own pass, rows with
    logprobs go through the sampler: both paths are covered."""
    real = engine.runner.run

    def poisoned(plan):  # type: ignore[no-untyped-def]
        logits, seqs = real(plan)
        with torch.inference_mode():
            for i, seq in enumerate(seqs):
                if seq.request_id == "bad" and seq.num_completion >= 5:  # mid-stream, batched
                    logits[i, 7] = float("nan")
        return logits, seqs

    def patch() -> Callable[[], None]:
        engine.runner.run = poisoned  # type: ignore[method-assign]
        return lambda: setattr(engine.runner, "run", real)

    solo, error, good = _beside_a_bad_request(engine, patch, logprobs)
    assert error is not None and "non-finite logits" in error
    assert good == solo
    assert engine.alive


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning"
)  # the thread dies on purpose
def test_requests_waiting_for_a_dying_engine_get_an_error_not_a_hang() -> None:
    catalog = load_catalog(ROOT / "models.yaml")
    cfg = catalog.default_model
    eng = Engine(load_model(cfg, catalog.cache_dir), cfg)
    submitted = threading.Event()

    def broken_prepare(threads: int) -> None:
        submitted.wait(10)
        raise RuntimeError("boom")

    eng.runner.prepare = broken_prepare  # type: ignore[method-assign]
    starter = threading.Thread(target=eng.start)
    starter.start()
    deadline = time.monotonic() + 30
    while not eng.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.alive, "the engine thread did not start within 30 s"

    async def main() -> str | None:
        params = SamplingParams(temperature=0.0, max_tokens=4)
        stream = eng.generate(_prompt(eng, "Hi"), params, "doomed")
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)  # the request is in the engine's inbox
        submitted.set()
        delta = await asyncio.wait_for(first, timeout=20)
        return delta.error

    assert asyncio.run(main()) == "engine thread died: RuntimeError('boom')"
    starter.join(timeout=10)
    with pytest.raises(EngineDeadError):
        asyncio.run(_run(eng, _prompt(eng, "Hi"), 4, "late"))

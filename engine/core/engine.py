"""The engine loop: one thread per loaded model, stepping schedule -> run -> sample -> detokenize -> publish.

The asyncio side talks to the thread through typed commands on a thread-safe inbox
(`_Add`, `_Abort`); the thread hands each request's `Delta`s back to its asyncio queue with
`loop.call_soon_threadsafe`. A request whose consumer goes away (client disconnect, task
cancelled) sends `_Abort`, and its KV blocks are freed before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from engine.catalog.config import ModelConfig
from engine.catalog.memory import kv_budget
from engine.core.blocks import BLOCK_SIZE
from engine.core.detokenize import IncrementalDetokenizer, special_token_ids
from engine.core.errors import ENGINE_FAILED, EngineDeadError, QueueFullError
from engine.core.request import Delta, EngineStats, FinishReason, Logprob, SamplingParams
from engine.core.scheduler import IDLE_PREFILL_FACTOR, Scheduler
from engine.core.sequence import Sequence
from engine.core.window import WindowBlocks
from engine.core.worker import Worker
from engine.model.info import ModelInfo, describe
from engine.model.runner import ModelRunner
from engine.model.threads import available_cores
from engine.sampling.grammar import GrammarCompiler, GrammarSpec
from engine.sampling.logprobs import TokenTexts
from engine.sampling.sampler import Sampler, sample_step

log = logging.getLogger("hearth.engine")


@dataclass(frozen=True)
class _Add:
    seq: Sequence
    detok: IncrementalDetokenizer


@dataclass(frozen=True)
class _Abort:
    request_id: str


class Engine(Worker):
    """One loaded model served by a continuous-batching loop on its own thread.

    `async for delta in engine.generate(prompt_ids, params, request_id, n)` yields the `Delta`s of
    n choices (`Delta.index`), each choice's last with `finish_reason`. Leaving the loop early
    (or cancelling) aborts the request.

    Public to the server: `config` (the catalog entry), `info` (a `ModelInfo`: what the model is and
    how it runs), `tokenizer` (the model's transformers tokenizer, to render prompts and count
    tokens), `max_context`, `vocab_size`, `stats`, `alive`, `dead_reason`, `check_grammar` and
    `generate`. The rest (`model`, `runner`, `scheduler`, `sampler`) belongs to the engine.
    """

    def __init__(self, loaded: Any, config: ModelConfig) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self._special = special_token_ids(self.tokenizer)  # what detokenizers skip, made once
        self.quantization: str = getattr(loaded, "quantization", config.quantization)  # what runs
        self.eos_token_ids: frozenset[int] = frozenset(loaded.eos_token_ids)
        device = next(self.model.parameters()).device
        self.kv_cache_tokens, config = kv_budget(self.model, config)  # and max_context resolved
        self.config = config
        self.num_blocks = self.kv_cache_tokens // BLOCK_SIZE + 1  # and the scratch block
        self.max_batch_size = config.max_batch_size
        self.info: ModelInfo = describe(
            self.model, config, self.max_batch_size, self.quantization, self.kv_cache_tokens
        )
        graphs = config.cuda_graphs if device.type == "cuda" else config.cpu_graphs
        step_tokens = IDLE_PREFILL_FACTOR * config.prefill_chunk + self.max_batch_size
        self.runner = ModelRunner(
            self.model,
            self.max_batch_size,
            self.max_context,
            self.num_blocks,
            graphs=graphs,
            step_tokens=step_tokens,
        )
        self.scheduler = self._scheduler()
        self.grammars = GrammarCompiler(self.tokenizer, self.vocab_size, sorted(self.eos_token_ids))
        self.sampler = Sampler(self.max_batch_size + 1, TokenTexts(self.tokenizer), self.grammars)
        self._inbox: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._detoks: dict[str, IncrementalDetokenizer] = {}
        self._stats = EngineStats()
        self._pending = 0  # requests sent to the thread, not yet admitted or finished
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self.dead_reason: str | None = None
        self.on_death: Callable[[str], None] | None = None  # called on the dying thread (the registry's)
        self.fault: Callable[[], None] | None = None  # before each step with work (engine.core.faults)

    def _scheduler(self) -> Scheduler:
        cfg = self.config
        window, cache = self.runner.window, self.runner.window_cache  # both set, or neither
        blocks = WindowBlocks(window, cache.num_blocks, cfg.prefix_cache) if window and cache else None
        return Scheduler(
            self.max_batch_size,
            self.num_blocks,
            cfg.max_waiting,
            cfg.prefill_chunk,
            caching=cfg.prefix_cache,
            window=blocks,
        )

    @property
    def max_context(self) -> int:
        assert self.config.max_context is not None  # resolved in __init__
        return self.config.max_context

    @property
    def vocab_size(self) -> int:
        """Rows of the model's logits: valid token ids are 0..vocab_size-1."""
        return int(self.model.config.get_text_config().vocab_size)

    def check_grammar(self, spec: GrammarSpec) -> str | None:
        """None when `spec` compiles for this model's tokenizer, else why not (for a 400)."""
        return self.grammars.check(spec)

    def start(self) -> None:
        """Start the engine thread and wait until it is ready to take requests."""
        self._spawn(f"engine-{self.config.id}")
        self._ready.wait()

    def restart(self) -> None:
        """After the thread died: a fresh thread, scheduler and sampler on the same weights and
        runner (its lean forward owns the weights; its KV blocks are rewritten before read).
        Returns once the thread runs; `dead_reason` is cleared by the thread itself."""
        if self._thread is not None:
            self._thread.join(timeout=10)  # the dying thread calls on_death just before it ends
        assert not self.alive, "restart() of a running engine"
        with self._lock:  # generate() sees dead_reason set until the new thread is ready
            old, self.scheduler = self.scheduler, self._scheduler()
            self.scheduler.carry_counters(old)
            self.sampler = Sampler(self.max_batch_size + 1, TokenTexts(self.tokenizer), self.grammars)
            self._inbox = queue.SimpleQueue()
            self._detoks = {}
            self._pending = 0
            self._update_gauges()
        self._ready = threading.Event()
        self._stopping = False
        self.start()

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str, n: int = 1
    ) -> AsyncIterator[Delta]:
        """Submit a request for n choices and yield their deltas as the engine produces them.

        The choices are n sequences; choice 0 has `request_id`, choice i `request_id/i`.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) + params.max_tokens > self.max_context:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                f"the context window of {self.max_context} tokens"
            )
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Delta] = asyncio.Queue()

        def emit(delta: Delta) -> None:
            loop.call_soon_threadsafe(out.put_nowait, delta)

        seqs: list[Sequence] = []
        for i in range(n):
            rid = request_id if i == 0 else f"{request_id}/{i}"
            parent = seqs[0] if seqs else None
            seqs.append(Sequence(rid, prompt_ids, params, emit, index=i, parent=parent))
        adds = [
            _Add(seq, IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop, self._special))
            for seq in seqs
        ]
        with self._lock:  # the thread sets dead_reason under this lock, then fails what is in the inbox
            if not self.alive or self.dead_reason is not None:
                raise EngineDeadError(self.dead_reason or "engine is not running")
            if self._pending + n > self.max_batch_size + self.config.max_waiting:
                raise QueueFullError(f"{self.config.id}: wait queue is full")
            self._pending += n
            for add in adds:
                self._inbox.put(add)
        running = set(range(n))
        try:
            while running:
                delta = await out.get()
                if delta.finish_reason is not None:
                    running.discard(delta.index)
                yield delta
        finally:
            for i in sorted(running):
                self._inbox.put(_Abort(seqs[i].request_id))

    # ---- engine thread ----

    def _main(self) -> None:
        threads = self.config.threads or available_cores()
        try:
            try:
                self.runner.prepare(threads)
                with self._lock:
                    self.dead_reason = None  # cleared here, so a restart is live only once prepared
            finally:
                self._ready.set()
            log.info(
                "engine for %s running (%d sequences at most, a KV cache of %d tokens, %d threads)",
                self.config.id,
                self.max_batch_size,
                self.kv_cache_tokens,
                threads,
            )
            with torch.inference_mode():
                while not self._stopping:
                    self._drain_inbox(block=not self.scheduler.has_work())
                    if not self._stopping:
                        self.step()
        except BaseException as exc:  # the thread must never die silently
            reason = f"engine thread died: {exc!r}"
            with self._lock:
                self.dead_reason = reason  # from here on, generate() refuses new requests
            log.exception("engine for %s died", self.config.id)
            self._fail_all(reason)
            if self.on_death is not None:
                try:
                    self.on_death(reason)
                except Exception:
                    log.exception("engine for %s: the death callback failed", self.config.id)

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                cmd = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if cmd is None:
                self._stopping = True
                return
            if isinstance(cmd, _Add):
                self._add(cmd)
            else:
                self._abort(cmd.request_id)

    def _add(self, cmd: _Add) -> None:
        seq = cmd.seq
        self._detoks[seq.request_id] = cmd.detok
        self.scheduler.waiting.append(seq)
        with self._lock:
            self._stats.submitted += 1
            self._update_gauges()

    def _abort(self, request_id: str) -> None:
        seq = self.scheduler.find(request_id)
        if seq is not None:
            self._release(seq, aborted=True)

    def step(self) -> None:
        """One iteration: schedule -> run -> sample -> detokenize -> publish."""
        plan = self.scheduler.schedule()
        if not plan:
            return
        if self.fault is not None:
            self.fault()  # an injected fault (tests): raises out of the step, killing the thread
        with self._lock:  # admitted sequences count as running before their first delta is out
            self._update_gauges()
        try:
            for src, dst in self.scheduler.take_copies():
                self.runner.cache.copy_block(src, dst)
            logits, due = self.runner.run(plan)
        except Exception as exc:
            log.exception("step failed for %d sequences", len(plan))
            for seq, _ in plan:
                self._fail(seq, f"generation failed: {exc}")
            return
        prompt_tokens = sum(n for seq, n in plan if seq.remaining > 1)
        for seq, n in plan:
            seq.num_computed += n
            self.scheduler.computed(seq)
        sampled = sample_step(self.sampler, logits, due, self._fail)
        for seq, token, logprob in sampled:
            self._publish(seq, token, logprob)
        with self._lock:
            self._stats.steps += 1
            self._stats.prompt_tokens += prompt_tokens
            self._stats.generated_tokens += len(sampled)
            self._update_gauges()

    def _publish(self, seq: Sequence, token: int, logprob: Logprob | None) -> None:
        detok = self._detoks[seq.request_id]
        seq.token_ids.append(token)
        params = seq.params
        finish: FinishReason | None = None
        if not params.ignore_eos and token in self.eos_token_ids or token in params.stop_token_ids:
            text, finish = detok.finish(), FinishReason.STOP
        else:
            text = detok.add(token)
            if detok.stop_hit is not None:
                finish = FinishReason.STOP
            elif seq.matcher is not None and seq.matcher.is_stopped():  # the grammar is complete
                text += detok.finish()
                finish = FinishReason.STOP
            elif seq.num_completion >= params.max_tokens or seq.num_tokens >= self.max_context:
                text += detok.finish()
                finish = FinishReason.LENGTH
        seq.emit(
            Delta(
                text=text,
                token_ids=(token,),
                prompt_tokens=seq.num_prompt,
                completion_tokens=seq.num_completion,
                cached_tokens=seq.cached_tokens,
                finish_reason=finish,
                stop_text=detok.stop_hit,
                index=seq.index,
                logprobs=() if logprob is None else (logprob,),
            )
        )
        if finish is not None:
            self._release(seq)

    def _release(self, seq: Sequence, aborted: bool = False, failed: bool = False) -> None:
        was_running = seq.row is not None
        self.scheduler.finish(seq)
        self._detoks.pop(seq.request_id, None)
        with self._lock:
            self._pending -= 1
            self._stats.freed_slots += int(was_running)
            self._stats.cached_tokens += seq.cached_tokens
            if aborted:
                self._stats.aborted += 1
            elif failed:
                self._stats.failed += 1
            else:
                self._stats.finished += 1
            self._update_gauges()

    def _fail(self, seq: Sequence, message: str, code: str | None = None) -> None:
        seq.emit(
            Delta(
                text="",
                token_ids=(),
                prompt_tokens=seq.num_prompt,
                completion_tokens=seq.num_completion,
                finish_reason=FinishReason.ERROR,
                error=message,
                index=seq.index,
                error_code=code,
            )
        )
        self._release(seq, failed=True)

    def _fail_all(self, message: str) -> None:
        """Fail every request the thread holds or has not read yet (the thread is dying); each gets
        its error delta even when the scheduler's own state is what broke."""
        seqs = [*self.scheduler.running, *self.scheduler.waiting]
        while True:
            try:
                cmd = self._inbox.get(block=False)
            except queue.Empty:
                break
            if isinstance(cmd, _Add):
                seqs.append(cmd.seq)
        for seq in dict.fromkeys(seqs):
            try:
                self._fail(seq, message, ENGINE_FAILED)
            except Exception:
                log.exception("engine for %s: failing request %s", self.config.id, seq.request_id)
                seq.emit(Delta("", (), seq.num_prompt, 0, finish_reason=FinishReason.ERROR, error=message,
                               index=seq.index, error_code=ENGINE_FAILED))  # fmt: skip

    def _update_gauges(self) -> None:
        self._stats = replace(self._stats, **self.scheduler.figures())

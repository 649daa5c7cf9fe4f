"""One step's logits -> one token (and its logprobs) per sequence, each row with its own settings.

Glue between the engine's sequences and the pure functions of `engine.sampling.filters` and
`engine.sampling.penalties`: it builds the per-row tensors a batch needs, and only those. A batch of
greedy rows without bias, penalties or logprobs costs one argmax.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch
from llguidance import LLMatcher

from engine.core.request import Logprob, SamplingParams
from engine.core.sequence import Sequence
from engine.sampling.filters import greedy_rows, sample, temperatures, token_logprobs
from engine.sampling.grammar import GrammarCompiler, GrammarMasks
from engine.sampling.logprobs import TokenTexts
from engine.sampling.penalties import TokenCounts, apply_logit_bias, apply_penalties

log = logging.getLogger("hearth.engine")
NON_FINITE = "the model produced non-finite logits for this request"
Sampled = tuple[Sequence, int, Logprob | None]  # a sequence, its new token, the token's logprob entry
SampleFn = Callable[[torch.Tensor, list[Sequence]], tuple[list[int], list[Logprob | None]]]


def sample_step(
    sampler: SampleFn, logits: torch.Tensor, due: list[Sequence], fail: Callable[[Sequence, str], None]
) -> list[Sampled]:
    """A step's tokens: every due row sampled; a row that cannot be (non-finite logits, a failing
    sampler) goes to `fail` and ends its own request, not the batch.

    One pass over the logits checks they are finite and takes each row's argmax (`greedy_rows`):
    when every row is plain greedy that argmax is the token, read from the device with the flags
    in one go; otherwise `sampler` (a `Sampler`) samples the finite rows, all at once, else one by one.
    """
    ids, finite = greedy_rows(logits)  # isfinite(...).all() was ~15 % of a Gemma 3 step
    plain = all(s.params.plain_greedy for s in due)
    if plain:
        tokens, good = torch.stack((ids, finite.to(ids.dtype))).tolist()
    else:
        good = finite.tolist()
    for seq, ok in zip(due, good, strict=True):
        if not ok:
            fail(seq, NON_FINITE)
    if plain:
        return [(seq, token, None) for seq, token, ok in zip(due, tokens, good, strict=True) if ok]
    if not all(good):
        keep = [i for i, ok in enumerate(good) if ok]
        logits, due = logits[keep], [due[i] for i in keep]
    if not due:
        return []
    try:
        tokens, logprobs = sampler(logits, due)
        return list(zip(due, tokens, logprobs, strict=True))
    except Exception:
        log.exception("batched sampling failed; sampling %d rows one by one", len(due))
    out: list[Sampled] = []
    for i, seq in enumerate(due):
        try:
            tokens, logprobs = sampler(logits[i : i + 1], [seq])
            out.append((seq, tokens[0], logprobs[0]))
        except Exception as exc:
            fail(seq, f"sampling failed: {exc}")
    return out


class Sampler:
    """Samples for the engine; owns the per-row token counts of the penalties (made on first use)
    and the grammar masks of constrained rows (each sequence's matcher made on its first token)."""

    def __init__(self, num_slots: int, texts: TokenTexts, grammars: GrammarCompiler) -> None:
        self.num_slots = num_slots
        self.texts = texts
        self.grammars = grammars
        self.masks = GrammarMasks(grammars.vocab_size)
        self._counts: TokenCounts | None = None

    def __call__(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> tuple[list[int], list[Logprob | None]]:
        """logits [B, V] for seqs (B of them) -> (token ids, logprob entries or None per row)."""
        params = [s.params for s in seqs]
        penalized = [i for i, p in enumerate(params) if p.penalized]
        logits = self._bias(logits, params)
        if penalized:
            logits = self._penalize(logits, seqs, penalized)
        constrained = [i for i, p in enumerate(params) if p.grammar is not None]
        if constrained:
            matchers = [self._matcher(seqs[i]) for i in constrained]
            logits = self.masks.apply(logits, constrained, matchers)
        chosen = sample(logits, params, [s.generator for s in seqs])  # [B]
        if penalized:
            rows = torch.tensor(penalized, device=logits.device)
            counts = self._counts
            assert counts is not None
            counts.add(self._slots(seqs, penalized, logits.device), chosen[rows])
        tokens = chosen.tolist()
        logprobs = self._logprobs(logits, params, chosen)
        if constrained:  # last: nothing after this may fail, or a per-row retry would feed a token twice
            GrammarMasks.advance(matchers, [tokens[i] for i in constrained])
        return tokens, logprobs

    def _matcher(self, seq: Sequence) -> LLMatcher:
        if seq.matcher is None:
            assert seq.params.grammar is not None
            seq.matcher = self.grammars.matcher(seq.params.grammar)
        return seq.matcher

    def _bias(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        entries = [(i, tok, val) for i, p in enumerate(params) for tok, val in p.logit_bias]
        if not entries:
            return logits
        rows, cols, values = zip(*entries, strict=True)
        dev = logits.device
        as_tensors = (torch.tensor(x, device=dev) for x in (rows, cols, values))
        return apply_logit_bias(logits, *as_tensors)

    def _penalize(self, logits: torch.Tensor, seqs: Seq[Sequence], penalized: list[int]) -> torch.Tensor:
        dev = logits.device
        if self._counts is None:
            self._counts = TokenCounts(self.num_slots, logits.shape[-1], dev)
        counts = self._counts
        for i in penalized:
            seq = seqs[i]
            if seq.fresh_row:  # first sampled since admitted: the row still holds an older sequence
                assert seq.row is not None
                counts.reset(seq.row, seq.token_ids[: seq.num_prompt], seq.token_ids[seq.num_prompt :])
                seq.fresh_row = False
        rows = torch.tensor(penalized, device=dev)
        generated, in_prompt = counts.rows(self._slots(seqs, penalized, dev))
        ps = [seqs[i].params for i in penalized]
        adjusted = apply_penalties(
            logits[rows],
            generated,
            in_prompt,
            frequency=torch.tensor([p.frequency_penalty for p in ps], device=dev),
            presence=torch.tensor([p.presence_penalty for p in ps], device=dev),
            repetition=torch.tensor([p.repetition_penalty for p in ps], device=dev),
        )
        return logits.index_copy(0, rows, adjusted)

    @staticmethod
    def _slots(seqs: Seq[Sequence], rows: list[int], device: torch.device) -> torch.Tensor:
        return torch.tensor([seqs[i].row for i in rows], device=device)

    def _logprobs(
        self, logits: torch.Tensor, params: list[SamplingParams], chosen: torch.Tensor
    ) -> list[Logprob | None]:
        """Entries for the rows that asked: log_softmax after bias, penalties and temperature."""
        out: list[Logprob | None] = [None] * len(params)
        asked = [i for i, p in enumerate(params) if p.logprobs]
        if not asked:
            return out
        rows = torch.tensor(asked, device=logits.device)
        k = max(params[i].top_logprobs for i in asked)
        temps = temperatures([params[i] for i in asked], logits.device)
        values, top_values, top_ids = token_logprobs(logits[rows], temps, chosen[rows], k)
        tokens = chosen[rows].tolist()
        for j, (i, lp, tv, ti) in enumerate(
            zip(asked, values.tolist(), top_values.tolist(), top_ids.tolist(), strict=True)
        ):
            n = params[i].top_logprobs
            out[i] = self.texts.entry(tokens[j], lp, list(zip(ti[:n], tv[:n], strict=True)))
        return out

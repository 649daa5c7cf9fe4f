"""The sampling and penalty functions on tiny tensors, and token texts for logprobs."""

from __future__ import annotations

import math

import torch

from engine.core.request import SamplingParams
from engine.core.sequence import sibling_seed
from engine.sampling.filters import apply_min_p, apply_top_k, apply_top_p, race, sample, token_logprobs
from engine.sampling.logprobs import TokenTexts, unicode_to_bytes
from engine.sampling.penalties import TokenCounts, apply_logit_bias, apply_penalties


def test_top_k_keeps_each_rows_k_best_and_zero_or_minus_one_is_off() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0]])
    out = apply_top_k(logits, torch.tensor([2, 0, -1]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert torch.equal(out[1], logits[1]) and torch.equal(out[2], logits[2])


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    out = apply_top_p(probs, torch.tensor([0.7, 1.0]))
    assert torch.allclose(out[0], torch.tensor([0.625, 0.375, 0.0]))
    assert torch.allclose(out[1], probs[1])


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    out = apply_min_p(probs, torch.tensor([0.4, 0.0]))
    assert torch.allclose(out[0], torch.tensor([2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(out[1], probs[1])


def test_logit_bias_adds_per_row_and_token() -> None:
    logits = torch.zeros(2, 3)
    out = apply_logit_bias(logits, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([5.0, -100.0]))
    assert out.tolist() == [[0.0, 0.0, 5.0], [-100.0, 0.0, 0.0]]
    assert logits.abs().sum() == 0  # out of place


def test_frequency_and_presence_penalties_follow_openai() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    none = torch.zeros(1, 3, dtype=torch.bool)
    out = apply_penalties(
        logits, counts, none, torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([1.0])
    )
    assert out.tolist() == [[1.0, 1.0 - 0.5 - 0.25, 1.0 - 1.5 - 0.25]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_seen_anywhere() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, 2.0]])
    counts = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    in_prompt = torch.tensor([[True, False, False, False]])
    zero = torch.zeros(1)
    out = apply_penalties(logits, counts, in_prompt, zero, zero, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -4.0, 2.0, 2.0]]


def test_neutral_penalties_leave_logits_bit_identical() -> None:
    logits = torch.randn(3, 50)
    counts = torch.randint(0, 3, (3, 50)).float()
    zero = torch.zeros(3)
    out = apply_penalties(logits, counts, counts > 1, zero, zero, torch.ones(3))
    assert torch.equal(out, logits)


def test_token_counts_reset_and_accumulate_per_slot() -> None:
    counts = TokenCounts(num_slots=3, vocab=5, device=torch.device("cpu"))
    counts.reset(1, [0, 4], [2, 2])
    counts.add(torch.tensor([1, 2, 1]), torch.tensor([3, 3, 2]))
    generated, in_prompt = counts.rows(torch.tensor([1, 2]))
    assert generated.tolist() == [[0, 0, 3, 1, 0], [0, 0, 0, 1, 0]]
    assert in_prompt[0].tolist() == [True, False, False, False, True]
    counts.reset(1, [], [])
    assert counts.counts[1].sum() == 0 and not counts.in_prompt[1].any()


def test_race_with_a_seed_does_not_depend_on_the_other_rows() -> None:
    probs = torch.softmax(torch.randn(3, 100), dim=-1)
    alone = race(probs[1:2], [torch.Generator().manual_seed(7)])
    batched = race(probs, [None, torch.Generator().manual_seed(7), None])
    assert alone.item() == batched[1].item()


def test_greedy_rows_take_the_argmax_and_sampled_rows_respect_top_k() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 2.0, 1.0]])
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.5, top_k=1)]
    assert sample(logits, params, [None, None]).tolist() == [1, 0]
    for _ in range(20):
        hot = SamplingParams(temperature=2.0, top_k=2)
        assert sample(logits, [hot, hot], [None, None]).tolist()[1] in (0, 1)


def test_tiny_temperature_counts_as_greedy() -> None:
    assert SamplingParams(temperature=1e-9).greedy
    assert not SamplingParams(temperature=0.1).greedy


def test_token_logprobs_are_sorted_and_match_the_chosen_token() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 3.0, 0.0]])
    chosen, top_values, top_ids = token_logprobs(logits, torch.tensor([1.0, 0.5]), torch.tensor([0, 1]), 3)
    assert top_ids[0].tolist() == [0, 1, 2]
    assert chosen[0] == top_values[0, 0]
    assert top_values[1, 0] > top_values[1, 1]
    assert torch.all(top_values <= 0)
    assert math.isclose(torch.logsumexp(torch.log_softmax(logits[1] / 0.5, -1), -1).item(), 0.0, abs_tol=1e-6)
    assert math.isclose(chosen[1].item(), torch.log_softmax(logits[1] / 0.5, -1)[1].item())


def test_sibling_seeds_keep_choice_zero_and_differ_for_the_others() -> None:
    assert sibling_seed(42, 0) == 42
    seeds = {sibling_seed(42, i) for i in range(8)}
    assert len(seeds) == 8 and all(0 <= s < 2**64 for s in seeds)
    negative = [sibling_seed(-5, i) for i in range(1, 4)]  # a negative seed still gives valid, distinct ones
    assert all(0 <= s < 2**64 for s in negative) and len(set(negative)) == 3


class _ByteLevelTokenizer:
    """A stand-in with GPT-2 style pieces: "Ġ" is a space, "Ã¶" the two bytes of "ö"."""

    class backend_tokenizer:  # noqa: N801 - mirrors the attribute of a real tokenizer
        decoder = "ByteLevel(add_prefix_space=True)"

    pieces = {0: "Ġw", 1: "Ã¶", 2: "Ã", 3: "<|im_end|>"}

    def decode(self, ids: list[int], **kwargs: object) -> str:
        raw = bytes(unicode_to_bytes()[c] for i in ids for c in self.pieces[i])
        return raw.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]


def test_token_texts_give_the_utf8_bytes_of_byte_level_pieces() -> None:
    texts = TokenTexts(_ByteLevelTokenizer())
    assert texts.byte_level
    assert texts.get(0) == (" w", (32, 119))
    assert texts.get(1) == ("ö", tuple("ö".encode()))
    assert texts.get(2) == ("\ufffd", (0xC3,))  # half a character: its real byte, not U+FFFD's
    assert texts.get(3) == ("<|im_end|>", tuple(b"<|im_end|>"))
    entry = texts.entry(0, -0.5, [(0, -0.5), (1, -1.5)])
    assert entry.token == " w" and [t.token_id for t in entry.top] == [0, 1]

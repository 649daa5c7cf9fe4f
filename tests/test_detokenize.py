"""IncrementalDetokenizer against the embedded model's byte-level BPE and a SentencePiece-style tokenizer."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from engine.core.detokenize import IncrementalDetokenizer

TEXTS = [
    "Hello, world!",
    "héllo wörld 🎉 中文 spaces  double",
    "def f(x):\n\tif x:\n\t\treturn [x, 'y']  # ok\n    pass\n\n",
    "emoji run 👩‍👩‍👧‍👦🇫🇷🎉🎉 and 日本語のテキスト, Ελληνικά, עברית.",
    "  leading spaces and trailing   ",
]


def _sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny Llama-style tokenizer: "▁" for spaces, byte fallback for anything not in the vocab."""
    vocab: dict[str, int] = {s: i for i, s in enumerate(["<unk>", "<s>", "</s>"])}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in ["▁hello", "▁world", "▁the", "ing", "▁def", "▁wor"]:
        cur = word[0]
        for c in word[1:]:
            if cur + c not in vocab:
                merges.append((cur, c))
                vocab[cur + c] = len(vocab)
            cur += c
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> Any:
    """The embedded model's tokenizer (SmolLM2's byte-level BPE), from its converted folder."""
    return AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="module", params=["byte_bpe", "sentencepiece"])
def tokenizer(request: pytest.FixtureRequest, smol: Any) -> Any:
    return smol if request.param == "byte_bpe" else _sentencepiece_tokenizer()


def _encode(tok: Any, text: str) -> list[int]:
    ids: list[int] = tok.encode(text, add_special_tokens=False)
    return ids


def _run(detok: IncrementalDetokenizer, ids: Sequence[int]) -> list[str]:
    """Feed ids one by one; the chunks returned by add() then finish()."""
    chunks = [detok.add(i) for i in ids]
    chunks.append(detok.finish())
    return chunks


@pytest.mark.parametrize("text", TEXTS)
def test_reassembled_chunks_equal_full_decode(tokenizer: Any, text: str) -> None:
    ids = _encode(tokenizer, text)
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=[])
    chunks = _run(detok, ids)
    expected = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(chunks) == expected == detok.text
    assert not any("\ufffd" in c for c in chunks)


def test_multibyte_characters_are_held_until_complete(smol: Any) -> None:
    ids = _encode(smol, " 🎉")
    assert len(ids) > 1  # the emoji's bytes are split over several tokens
    detok = IncrementalDetokenizer(smol, prompt_ids=[])
    chunks = _run(detok, ids)
    assert [c for c in chunks if c] == [" 🎉"]


def test_special_tokens_are_skipped(tokenizer: Any) -> None:
    ids = _encode(tokenizer, "hello world, the end")
    eos = tokenizer.eos_token_id
    mixed = [eos, *ids[:2], eos, *ids[2:], eos]
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=[])
    assert "".join(_run(detok, mixed)) == tokenizer.decode(mixed, skip_special_tokens=True)
    assert tokenizer.eos_token not in detok.text


@pytest.mark.parametrize("completion", [" world and more", "héllo 中文 🎉", "\n\tcode()"])
def test_prompt_context_gives_the_first_token_its_leading_space(tokenizer: Any, completion: str) -> None:
    prompt = _encode(tokenizer, "Say hello")
    gen = _encode(tokenizer, "Say hello" + completion)[len(prompt) :]
    bos = tokenizer.bos_token_id
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=[bos, *prompt, bos])
    full = tokenizer.decode(prompt + gen, skip_special_tokens=True)
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    assert "".join(_run(detok, gen)) == full[len(head) :]


def _assert_stops(tok: Any, text: str, stops: Sequence[str], expected: str, hit: str | None) -> None:
    """Token by token: emitted text only grows, never shows a stop (or part of one), ends as `expected`."""
    ids = _encode(tok, text)
    detok = IncrementalDetokenizer(tok, prompt_ids=[], stop=stops)
    emitted = ""
    for i in ids:
        emitted += detok.add(i)
        assert expected.startswith(emitted)
        assert emitted == detok.text
    emitted += detok.finish()
    assert emitted == expected == detok.text
    assert detok.stop_hit == hit
    assert detok.add(ids[0]) == "" or hit is None


def test_stop_across_token_boundaries(tokenizer: Any) -> None:
    _assert_stops(tokenizer, "hello world, the end", ["lo wor"], "hel", "lo wor")


def test_stop_is_never_emitted_partially(smol: Any) -> None:
    text = "hello world <|end|> more text <|"
    ids = _encode(smol, text)
    detok = IncrementalDetokenizer(smol, prompt_ids=[], stop=["<|end|>"])
    for i in ids:
        chunk = detok.add(i)
        assert "<" not in chunk and "|" not in chunk
    assert detok.text == "hello world "
    assert detok.finish() == ""
    assert detok.stop_hit == "<|end|>"


def test_partial_match_that_is_not_a_stop_is_released(tokenizer: Any) -> None:
    ids = _encode(tokenizer, "hello world")
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=[], stop=["hello there"])
    first = detok.add(ids[0])
    assert first == ""  # "hello" could still become "hello there"
    rest = "".join(detok.add(i) for i in ids[1:]) + detok.finish()
    assert first + rest == "hello world"
    assert detok.stop_hit is None


def test_finish_releases_a_trailing_partial_match(tokenizer: Any) -> None:
    _assert_stops(tokenizer, "the end is near", ["near the end"], "the end is near", None)
    _assert_stops(tokenizer, "hello world", ["world cup"], "hello world", None)


def test_multiple_stops_earliest_wins(tokenizer: Any) -> None:
    text = "one two three four"
    _assert_stops(tokenizer, text, ["four", "two", "three"], "one ", "two")
    _assert_stops(tokenizer, text, ["xyz", "e f"], "one two thre", "e f")


def test_stop_at_the_very_start(tokenizer: Any) -> None:
    _assert_stops(tokenizer, "Stop here please", ["Stop"], "", "Stop")


def test_stop_inside_multibyte_text(smol: Any) -> None:
    _assert_stops(smol, "héllo 中文 🎉 wörld", ["文 🎉"], "héllo 中", "文 🎉")


def test_stop_in_generation_after_prompt(smol: Any) -> None:
    prompt = smol.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    if not isinstance(prompt, list):
        prompt = prompt["input_ids"]
    gen = _encode(smol, "Sure! Here it is.\nDONE and more")
    detok = IncrementalDetokenizer(smol, prompt_ids=prompt, stop=["\nDONE"])
    assert "".join(_run(detok, gen)) == "Sure! Here it is."
    assert detok.stop_hit == "\nDONE"


def test_empty_stop_strings_are_ignored(tokenizer: Any) -> None:
    _assert_stops(tokenizer, "hello world", [""], "hello world", None)

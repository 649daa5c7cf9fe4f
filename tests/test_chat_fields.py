"""The chat request's remaining fields through the openai SDK: `stop` as a string or a list, fields
accepted without effect, `enable_search`, unknown fields (ignored, logged once) and
`system_fingerprint` on every response and chunk."""

from __future__ import annotations

import re
from typing import Any

import httpx
import openai

from tests.helpers import assert_openai_error
from tests.launch import MODEL, Server

ASK = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
GREEDY: dict[str, Any] = {"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": 12}


def test_stop_as_a_string_or_a_list(client: openai.OpenAI) -> None:
    free = client.chat.completions.create(**GREEDY).choices[0].message.content or ""
    assert len(free) > 6
    stop = free[4:6]  # greedy: the same text comes again, and ends where `stop` first appears
    head = free[: free.index(stop)]
    as_string = client.chat.completions.create(**GREEDY, stop=stop).choices[0]
    as_list = client.chat.completions.create(**GREEDY, stop=["@@@", stop]).choices[0]
    assert as_string.finish_reason == as_list.finish_reason == "stop"
    assert as_string.message.content == as_list.message.content == head


def test_fields_without_effect(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(**GREEDY).choices[0].message.content
    extras = {"sess_id": "s-1", "retries": 2, "enable_search": False}
    r = client.chat.completions.create(
        **GREEDY, user="u-1", metadata={"team": "a"}, store=True, extra_body=extras
    )
    assert r.choices[0].message.content == plain


def test_enable_search_is_400(server: Server) -> None:
    r = httpx.post(f"{server.base_url}/chat/completions", json={**GREEDY, "enable_search": True}, timeout=60)
    assert_openai_error(r, 400, "enable_search")


def test_unknown_fields_are_ignored_and_logged_once(client: openai.OpenAI, server: Server) -> None:
    for _ in range(2):
        r = client.chat.completions.create(**{**GREEDY, "max_tokens": 1}, extra_body={"frobnicate_level": 3})
        assert r.choices[0].message.content is not None
    assert server.log.read_text().count("'frobnicate_level'") == 1


def test_system_fingerprint_on_every_response_and_chunk(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(**{**GREEDY, "max_tokens": 3})
    fingerprint = whole.system_fingerprint
    assert fingerprint is not None and re.fullmatch(r"fp_[0-9a-f]{10}", fingerprint)
    chunks = list(client.chat.completions.create(**{**GREEDY, "max_tokens": 3}, stream=True))
    assert chunks and {chunk.system_fingerprint for chunk in chunks} == {fingerprint}
    legacy = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=2, temperature=0)
    assert legacy.system_fingerprint == fingerprint

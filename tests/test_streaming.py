"""Server-sent events: the chunk sequence, reassembly, usage, stop strings, disconnects."""

from __future__ import annotations

import json

import httpx
import openai

from tests.conftest import MODEL, Server
from tests.helpers import drop_stream, total, wait_idle

STORY = [{"role": "user", "content": "Tell me a short story about a brave mouse."}]


def test_stream_reassembles_to_the_non_streamed_text(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=60)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=STORY,
            temperature=0,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == plain.choices[0].message.content
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]
    assert usage.usage.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]


def test_raw_stream_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "messages": STORY, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert "usage" not in last or last["usage"] is None


def test_streamed_stop_string_is_never_sent_even_partly(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=60)
    full = plain.choices[0].message.content or ""
    words = full.split()
    stop = " ".join(words[3:5])  # two words from the middle: spans several tokens
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=STORY, temperature=0, max_tokens=60, stream=True, stop=stop
        )
    )
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    text = "".join(pieces)
    assert text == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_client_that_drops_a_stream_frees_its_sequence(server: Server) -> None:
    aborted_before = total(server.stats(), "aborted")
    body = {"model": MODEL, "messages": STORY, "max_tokens": 1000, "stream": True}
    drop_stream(f"{server.base_url}/chat/completions", body, "data: ")
    assert total(wait_idle(server), "aborted") == aborted_before + 1


def test_client_that_drops_a_non_streamed_request_frees_its_sequence(server: Server) -> None:
    aborted_before = total(server.stats(), "aborted")
    body = {"model": MODEL, "messages": STORY, "max_tokens": 2000, "ignore_eos": True}
    try:
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=2)
    except httpx.TimeoutException:
        pass
    assert total(wait_idle(server), "aborted") == aborted_before + 1

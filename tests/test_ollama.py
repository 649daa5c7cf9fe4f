"""The Ollama API (`/api/*`) through the official `ollama` Python client, on the session's server.

Listing, chat and generate (streamed and not), show, ps, version, `format` (a JSON Schema, "json"),
tools (a call shaped by a `format` schema, since the 135M model seldom calls unprompted; history with
calls and results), `options` (num_predict, stop, seed, num_ctx), `keep_alive` (a duration, for good,
0 unloads) and Ollama's error shape `{"error": "..."}` with its statuses.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from server.http.errors import APIError
from server.ollama.keep_alive import keep_alive_seconds
from tests.launch import MODEL, Server

ASK = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 6}
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
        "rank": {"type": "integer"},
    },
    "required": ["city", "rank"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "PST"]}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TIME_TOOL = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a timezone", "parameters": TIME_PARAMS},
}
# One call of get_time as the whole answer: the output parser reads a bare JSON call of a declared tool.
TIME_CALL = {
    "type": "object",
    "properties": {"name": {"const": "get_time"}, "arguments": TIME_PARAMS},
    "required": ["name", "arguments"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=300)


def _final_checks(r: Any, eval_count: int | None = None) -> None:
    """The last object's fields: done, a reason, counts and nanosecond timings that add up."""
    assert r.done is True and r.done_reason in {"stop", "length"}
    assert r.model == MODEL and r.created_at
    assert r.prompt_eval_count > 0 and r.eval_count >= 1
    if eval_count is not None:
        assert r.eval_count == eval_count
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert r.load_duration >= 0


def test_list_names_the_catalog(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert MODEL in models and "gemma3-270m" in models
    served = models[MODEL]
    assert served.size and served.size > 0  # loaded
    assert served.details is not None and served.details.format == "gguf" and served.details.family == "llama"
    assert served.digest and len(served.digest) == 64 and served.modified_at is not None


def test_version(server: Server) -> None:
    body = httpx.get(f"{server.url}/api/version").json()
    assert [int(part) for part in body["version"].split(".")] >= [0, 5, 0]
    assert body["hearth"]


def test_chat_not_streamed(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=ASK, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content
    _final_checks(r)
    assert r.eval_count <= 6


def test_chat_streamed_equals_the_whole_answer(client: ollama.Client) -> None:
    whole = client.chat(model=MODEL, messages=ASK, options=GREEDY)
    parts = list(client.chat(model=MODEL, messages=ASK, options=GREEDY, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    _final_checks(parts[-1], whole.eval_count)
    assert parts[-1].done_reason == whole.done_reason


def test_a_model_tag_and_an_alias_name_the_model(client: ollama.Client) -> None:
    r = client.chat(model="smollm2:latest", messages=ASK, options={"temperature": 0, "num_predict": 1})
    assert r.model == MODEL and r.eval_count == 1


def test_generate(client: ollama.Client, tokenizer: Any) -> None:
    r = client.generate(
        model=MODEL, prompt="What is the capital of France?", system="Be brief.", options=GREEDY
    )
    assert r.response
    _final_checks(r)
    parts = list(
        client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY, stream=True)
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True, options=GREEDY)
    assert raw.response and raw.prompt_eval_count == len(tokenizer("The capital of France is")["input_ids"])


def test_logprobs(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Hi", options={"num_predict": 3}, logprobs=True, top_logprobs=2)
    assert r.logprobs is not None and len(r.logprobs) == r.eval_count == 3
    assert all(entry.logprob <= 0 and len(entry.top_logprobs or ()) == 2 for entry in r.logprobs)


def test_show(client: ollama.Client) -> None:
    r = client.show(MODEL)
    assert r.capabilities is not None and {"completion", "tools"} <= set(r.capabilities)
    assert r.details is not None and r.details.family == "llama" and r.details.parameter_size == "134.5M"
    assert r.modelinfo is not None and r.modelinfo["llama.context_length"] == 4096
    assert r.template and "im_start" in r.template


def test_ps(client: ollama.Client) -> None:
    [loaded] = [m for m in client.ps().models if m.model == MODEL]
    assert loaded.context_length == 4096 and loaded.size and loaded.size > 0
    assert loaded.expires_at is not None


def test_format_json_schema_parses(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=ASK, format=CITY, options={"temperature": 0, "num_predict": 40})
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content or ""), CITY)


def test_format_json_gives_an_object(client: ollama.Client) -> None:
    r = client.generate(
        model=MODEL, prompt="Name a city.", format="json", options={"temperature": 0, "num_predict": 30}
    )
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response or ""), dict)
    else:
        assert (r.response or "").lstrip().startswith("{")


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_comes_back_with_arguments_as_an_object(client: ollama.Client, stream: bool) -> None:
    ask = [{"role": "user", "content": "What time is it in London?"}]
    kwargs: dict[str, Any] = {
        "tools": [TIME_TOOL],
        "format": TIME_CALL,
        "options": {"temperature": 0, "num_predict": 40},
    }
    if stream:
        parts = list(client.chat(model=MODEL, messages=ask, stream=True, **kwargs))
        calls = [call for p in parts for call in p.message.tool_calls or ()]
        assert not "".join(p.message.content or "" for p in parts)
    else:
        r = client.chat(model=MODEL, messages=ask, **kwargs)
        calls = list(r.message.tool_calls or ())
        assert r.done_reason == "stop" and r.message.content == ""
    [call] = calls
    assert call.function.name == "get_time"
    jsonschema.validate(dict(call.function.arguments), TIME_PARAMS)


def test_tool_calls_and_results_in_the_history_reach_the_prompt(client: ollama.Client) -> None:
    call = {"function": {"name": "get_time", "arguments": {"timezone": "CET"}}}
    history = [
        {"role": "user", "content": "What time is it in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "get_time", "content": "14:05"},
    ]
    options = {"temperature": 0, "num_predict": 1}
    short = client.chat(model=MODEL, messages=history[:1], tools=[TIME_TOOL], options=options)
    r = client.chat(model=MODEL, messages=history, tools=[TIME_TOOL], options=options)
    assert r.eval_count == 1 and r.prompt_eval_count > short.prompt_eval_count + 10


def test_num_predict_ends_with_length(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=ASK, options={"temperature": 0, "num_predict": 3})
    assert (r.eval_count, r.done_reason) == (3, "length")


def test_num_ctx_narrows_the_window(client: ollama.Client) -> None:
    prompt = client.chat(model=MODEL, messages=ASK, options={"num_predict": 1}).prompt_eval_count
    assert prompt is not None
    r = client.chat(model=MODEL, messages=ASK, options={"temperature": 0, "num_ctx": prompt + 2})
    assert (r.eval_count, r.done_reason) == (2, "length")


def test_stop_and_seed(client: ollama.Client) -> None:
    greedy = client.chat(model=MODEL, messages=ASK, options=GREEDY).message.content or ""
    word = greedy.split()[1]
    stopped = client.chat(model=MODEL, messages=ASK, options={**GREEDY, "stop": [word]})
    assert stopped.done_reason == "stop" and stopped.message.content == greedy[: greedy.index(word)]
    seeded = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 7, "num_predict": 6}
    first, again = (client.chat(model=MODEL, messages=ASK, options=seeded).message.content for _ in range(2))
    assert first == again


def assert_ollama_error(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert text in body["error"], body["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        ("/api/chat", {"model": "nope", "messages": ASK}, 404, "'nope' not found"),
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "'nope' not found"),
        ("/api/show", {"model": "nope"}, 404, "not found"),
        ("/api/chat", {"messages": ASK}, 400, "model is required"),
        (
            "/api/chat",
            {"model": MODEL, "messages": ASK, "options": {"temperature": "hot"}},
            400,
            "options.temperature",
        ),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"top_p": 2}}, 400, "options.top_p"),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"num_predict": 0}}, 400, "num_predict"),
        ("/api/chat", {"model": MODEL, "messages": ASK, "options": {"num_ctx": 8192}}, 400, "num_ctx 8192"),
        ("/api/chat", {"model": MODEL, "messages": ASK, "format": "yaml"}, 400, "format"),
        ("/api/chat", {"model": MODEL, "messages": ASK, "think": True}, 400, "does not support thinking"),
        ("/api/chat", {"model": MODEL, "messages": ASK, "keep_alive": "soon"}, 400, "keep_alive"),
        (
            "/api/chat",
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ("/api/generate", {"model": MODEL, "prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "context": [1, 2]}, 400, "context"),
        ("/api/embed", {"model": MODEL, "input": "x"}, 400, "not an embedding model"),
        ("/api/embeddings", {"model": MODEL, "prompt": "x"}, 400, "not an embedding model"),
        ("/api/pull", {"model": "llama3.2"}, 501, "hearth add"),
        ("/api/create", {"model": "mine", "from": MODEL}, 501, "hearth add"),
        ("/api/nothing", {}, 404, "Invalid URL"),
    ],
)
def test_errors_in_ollama_shape(
    server: Server, path: str, body: dict[str, Any], status: int, text: str
) -> None:
    assert_ollama_error(httpx.post(f"{server.url}{path}", json=body, timeout=60), status, text)


def test_the_client_raises_the_error_with_its_status(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="nope", messages=ASK)
    assert caught.value.status_code == 404 and "not found" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2")
    assert caught.value.status_code == 501 and "hearth add" in caught.value.error


def _expiry(client: ollama.Client) -> datetime | None:
    for m in client.ps().models:
        if m.model == MODEL:
            return m.expires_at
    return None


def test_keep_alive_sets_the_expiry_and_zero_unloads(client: ollama.Client) -> None:
    one = {"temperature": 0, "num_predict": 1}
    client.chat(model=MODEL, messages=ASK, options=one, keep_alive="10m")
    expires = _expiry(client)
    assert expires is not None
    assert timedelta(minutes=9) < expires - datetime.now(timezone.utc) <= timedelta(minutes=10)
    client.chat(model=MODEL, messages=ASK, options=one, keep_alive=-1)
    forever = _expiry(client)
    assert forever is not None and forever.year > 2300
    unloaded = client.chat(model=MODEL, messages=[], keep_alive=0)
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    deadline = time.monotonic() + 30
    while _expiry(client) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _expiry(client) is None, "keep_alive 0 unloads the model once it is idle"
    loaded = client.generate(model=MODEL, prompt="")  # an empty prompt loads it again
    assert (loaded.done_reason, loaded.response) == ("load", "")
    assert _expiry(client) is not None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (300, 300.0), (1.5, 1.5), ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("2.5s", 2.5)]
    + [("90", 90.0), ("0", 0.0), (0, 0.0), (-1, math.inf), ("-1", math.inf), ("-1m", math.inf)],
)
def test_keep_alive_reads_numbers_and_go_durations(value: Any, seconds: float | None) -> None:
    if seconds is None or math.isinf(seconds):
        assert keep_alive_seconds(value) == seconds
    else:
        assert keep_alive_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 m", "m5", "1h-5m", "", "5d"])
def test_keep_alive_rejects_what_is_not_a_duration(value: str) -> None:
    with pytest.raises(APIError) as caught:
        keep_alive_seconds(value)
    assert caught.value.status == 400 and "keep_alive" in caught.value.message


def test_embed_gives_the_vectors_of_v1_embeddings(client: ollama.Client, server: Server) -> None:
    texts = ["A cat naps on the couch.", "The stock market fell today."]
    out = client.embed(model="all-minilm-l6-v2", input=texts)
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384
    assert out.prompt_eval_count and out.prompt_eval_count > 4
    reference = httpx.post(
        f"{server.base_url}/embeddings", json={"model": "all-minilm-l6-v2", "input": texts}, timeout=300
    ).json()["data"]
    for got, want in zip(out.embeddings, reference, strict=True):
        assert max(abs(a - b) for a, b in zip(got, want["embedding"], strict=True)) < 1e-6
    old = client.embeddings(model="all-minilm-l6-v2", prompt=texts[0])
    assert max(abs(a - b) for a, b in zip(old.embedding, reference[0]["embedding"], strict=True)) < 1e-6
    shown = client.show("all-minilm-l6-v2")
    assert shown.capabilities == ["embedding"]

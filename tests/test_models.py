"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server


def test_list_shows_the_catalog(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    m = next(m for m in models.data if m.id == MODEL)
    assert m.object == "model" and m.owned_by and m.created > 0


def test_retrieve_by_id_and_alias(client: openai.OpenAI) -> None:
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve("smollm2").id == MODEL


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])


def test_health_is_cheap_and_open(server: Server) -> None:
    r = httpx.get(f"{server.url}/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"

"""Stored responses: the SQLite store's limits (count, age) and owners, the default path in the cache
folder, and a server with API keys whose responses are each key's own and outlive a restart."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai
import pytest

from server.app import responses_store
from server.openai.responses.store import ResponseStore, StoreConfig, owner_of
from server.settings import Settings
from tests.launch import MODEL, ROOT, Launched, launch

KEYS = ("key-ada", "key-bob")


def _response(i: int, created_at: float | None = None) -> dict[str, Any]:
    return {"id": f"resp_{i}", "created_at": created_at or time.time() + i, "output": [{"type": "message"}]}


def test_the_store_keeps_at_most_max_count_dropping_the_oldest(tmp_path: Path) -> None:
    store = ResponseStore(StoreConfig(tmp_path / "r.sqlite3", max_count=2))
    for i in range(3):
        store.put("", _response(i), [{"id": f"in{i}"}], [])
    assert store.count() == 2
    assert store.get("", "resp_0") is None
    found = store.get("", "resp_2")
    assert found is not None and found.input_items == [{"id": "in2"}]
    assert found.conversation == [{"type": "message"}]


def test_the_store_forgets_what_is_older_than_max_age(tmp_path: Path) -> None:
    store = ResponseStore(StoreConfig(tmp_path / "r.sqlite3", max_age=60))
    store.put("", _response(0, created_at=time.time() - 120), [], [])
    assert store.get("", "resp_0") is None
    store.put("", _response(1), [], [])
    assert store.count() == 1  # the old one was dropped when the new one came


def test_a_response_is_its_owners_only(tmp_path: Path) -> None:
    store = ResponseStore(StoreConfig(tmp_path / "r.sqlite3"))
    ada, bob = owner_of("key-ada"), owner_of("key-bob")
    store.put(ada, _response(0), [], [])
    assert store.get(bob, "resp_0") is None and not store.delete(bob, "resp_0")
    assert store.get(ada, "resp_0") is not None and store.delete(ada, "resp_0")


def test_the_default_database_is_in_the_cache_folder(tmp_path: Path) -> None:
    store, problem = responses_store(Settings(config_path=ROOT / "models.yaml"), tmp_path)
    assert store is not None and problem is None and store.config.path == tmp_path / "responses.sqlite3"
    assert (tmp_path / "responses.sqlite3").is_file()
    off = Settings(config_path=ROOT / "models.yaml", responses_max_count=0)
    store, problem = responses_store(off, tmp_path)
    assert store is None and problem == "this server stores no responses (--responses-max-count 0)"


def test_an_unwritable_folder_serves_on_without_a_store_and_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # fails as root too
    store, problem = responses_store(Settings(config_path=ROOT / "models.yaml"), blocker / "cache")
    assert store is None and problem is not None
    assert str(blocker / "cache" / "responses.sqlite3") in problem
    with pytest.raises(ValueError):
        Settings(config_path=ROOT / "models.yaml", responses_max_age_days=0)


def _serve(db: Path, log: Path) -> AbstractContextManager[Launched]:
    args = ["--config", str(ROOT / "models.yaml"), "--responses-db", str(db)]
    return launch(args, log, env={"HEARTH_API_KEYS": ",".join(KEYS)})


def _client(server: Launched, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=300)


def test_responses_are_each_keys_own_and_outlive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "responses.sqlite3"
    with _serve(db, tmp_path / "first.log") as server:
        ada, bob = _client(server, "key-ada"), _client(server, "key-bob")
        first = ada.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=2, temperature=0)
        assert ada.responses.retrieve(first.id).id == first.id
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.input_items.list(first.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.create(model=MODEL, input="Hi.", previous_response_id=first.id, max_output_tokens=1)
    with _serve(db, tmp_path / "second.log") as server:
        ada = _client(server, "key-ada")
        assert ada.responses.retrieve(first.id).model_dump() == first.model_dump()
        after = ada.responses.create(
            model=MODEL, input="What is my name?", previous_response_id=first.id, max_output_tokens=2
        )
        assert after.previous_response_id == first.id
        assert first.usage is not None and after.usage is not None
        assert after.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

"""Stored responses (`store: true`, the default): an SQLite database under the cache directory.

One row per response: its owner (a digest of the API key that made it; empty when the server has
no keys), the response object, this request's input items (`GET .../input_items`) and the
conversation before its output (what `previous_response_id` continues: that history, then the
output). The database outlives the server; it is kept within `max_count` rows and `max_age`
seconds, the oldest dropped first, each time a response is added. Calls block (SQLite is local
and quick); the routes make them from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""


@dataclass(frozen=True)
class StoreConfig:
    """Where the database lives and how much it keeps: at most `max_count` responses, none older
    than `max_age` seconds."""

    path: Path
    max_count: int = 10_000
    max_age: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if self.max_count < 1:
            raise ValueError("the responses store must keep at least 1 response")
        if not self.max_age > 0:
            raise ValueError("the responses store's max age must be > 0 seconds")


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """What a response continuing this one sees before its own input: the history, then the output."""
        return [*self.history, *self.response.get("output", [])]


def owner_of(key: str | None) -> str:
    """The owner a request's API key makes (its SHA-256; empty without a key)."""
    return hashlib.sha256(key.encode()).hexdigest() if key else ""


class ResponseStore:
    """The database, opened (and created) at `config.path`."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        config.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(config.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)

    def put(
        self,
        owner: str,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        history: list[dict[str, Any]],
    ) -> None:
        """Store (or replace) a response, then drop what is past the limits."""
        row = (
            response["id"],
            owner,
            float(response.get("created_at") or time.time()),
            json.dumps(response, ensure_ascii=False),
            json.dumps(input_items, ensure_ascii=False),
            json.dumps(history, ensure_ascii=False),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)
            self._prune()

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response `response_id` of `owner`; None when unknown, expired or someone else's."""
        oldest = time.time() - self.config.max_age
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, history FROM responses "
                "WHERE id = ? AND owner = ? AND created_at >= ?",
                (response_id, owner, oldest),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def delete(self, owner: str, response_id: str) -> bool:
        """Whether `owner` had a response `response_id` (now deleted)."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            )
        return cursor.rowcount > 0

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _prune(self) -> None:
        """Drop responses older than `max_age`, then the oldest beyond `max_count` (lock held)."""
        self._db.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self.config.max_age,))
        self._db.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
            "ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
            (self.config.max_count,),
        )

"""The device's event outbox: a bounded SQLite queue that survives restarts and outages.

Events wait here, oldest first, until the broker acknowledges them (MQTT QoS 1); a
sent event is removed only after its acknowledgement, so delivery is at-least-once
and the collector deduplicates by the event's id. When the outbox is full the
oldest events are dropped and counted (``dropped`` in :meth:`Outbox.stats`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

OUTBOX_FILE = "outbox.sqlite"
DEFAULT_LIMIT = 10000


class Outbox:
    """``<root>/events/outbox.sqlite``: events waiting to be sent, at most ``limit`` of them."""

    def __init__(self, folder: str, limit: int | None = None) -> None:
        """``limit``: the most events kept (set by whoever adds events; remembered)."""
        if limit is not None and limit < 1:
            raise ValueError(f"outbox limit: expected 1 or more, found {limit}")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, OUTBOX_FILE)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events ("
            "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, body TEXT NOT NULL)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
        )
        if limit is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES ('limit', ?)", (limit,)
            )
        row = self.db.execute("SELECT value FROM counters WHERE name = 'limit'").fetchone()
        self.limit = int(row[0]) if row else DEFAULT_LIMIT
        # the number waiting, kept as a counter: counting the rows at every add would slow
        # the outbox down as a backlog grows (an outbox written before the counter: counted once)
        with self._transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO counters (name, value) "
                "SELECT 'pending', COUNT(*) FROM events"
            )

    def close(self) -> None:
        self.db.close()

    def _bump(self, name: str, by: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (name,))
        self.db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))

    def add(self, event: dict) -> int:
        """Queue one event (its ``id`` unique); returns how many old events were dropped."""
        body = json.dumps(event, sort_keys=True, separators=(",", ":"))
        with self._transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO events (id, body) VALUES (?, ?)", (event["id"], body)
            )
            self._bump("pending", cur.rowcount)
            over = self._pending() - self.limit
            if over > 0:
                cur = self.db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                    (over,),
                )
                self._bump("dropped", cur.rowcount)
                self._bump("pending", -cur.rowcount)
        return max(over, 0)

    def _pending(self) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = 'pending'").fetchone()
        return int(row[0]) if row else 0

    def pending(self, limit: int = 100) -> list:
        """The oldest waiting events: ``[(seq, body), ...]``."""
        rows = self.db.execute("SELECT seq, body FROM events ORDER BY seq LIMIT ?", (limit,))
        return [(int(seq), str(body)) for seq, body in rows.fetchall()]

    def remove(self, seqs: list) -> None:
        """Forget events the broker acknowledged."""
        if not seqs:
            return
        with self._transaction():
            cur = self.db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])
            self._bump("sent", cur.rowcount)
            self._bump("pending", -cur.rowcount)

    def stats(self) -> dict:
        counters = dict(self.db.execute("SELECT name, value FROM counters").fetchall())
        return {
            "pending": int(counters.get("pending", 0)),
            "sent": int(counters.get("sent", 0)),
            "dropped": int(counters.get("dropped", 0)),
            "limit": self.limit,
        }

    @contextlib.contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

"""A standalone inspector's durable notification log and subscription records, in one SQLite file.

Without etcd, a restart (SIGTERM, a crash) must not start the sequence at 1
again: consumers resume with their cursor and must receive exactly what they
missed (DESIGN principle 5). ``SqliteLog`` is the ``NotificationLog`` of
``notifier/log.py`` on a SQLite file: each append is committed before it is
fanned out (WAL, ``synchronous=NORMAL``: it survives the process, not a power
cut), the newest ``retention`` entries are kept, and the last of them are
also held in memory so resuming consumers read from there. ``SqliteRecords``
keeps the subscription records (``notifier/subscriptions.py``) in the same
file. One thread owns the connection; the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from doctor_common.api import fault_pb2
from notifier.log import CursorExpired

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (sequence INTEGER PRIMARY KEY, notification BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, id));
"""
Op = Callable[[sqlite3.Connection], None]  # a write applied in the same transaction as a log append
CACHED = 1000  # the newest entries held in memory too: what resuming consumers usually read


class SqliteStore:
    """The file and the one thread that talks to it, shared by the log and the records."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notifier-sqlite")
        self._db = self._pool.submit(self._open).result()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the store's thread and wait (start-up, before the event loop serves anyone)."""
        return self._pool.submit(fn, *args).result()

    async def close(self) -> None:
        await self.run(self._db.close)
        self._pool.shutdown(wait=True)


class SqliteLog:
    def __init__(self, store: SqliteStore, retention: int = 10_000) -> None:
        self.store = store
        self.retention = retention
        self._cache: deque[fault_pb2.FaultNotification] = deque(maxlen=min(CACHED, retention))
        self._last, self._first = store.call(self._bounds)
        for blob in store.call(self._newest, self._cache.maxlen):
            self._cache.append(fault_pb2.FaultNotification.FromString(blob))

    def _bounds(self) -> tuple[int, int]:
        first, last = self.store._db.execute("SELECT min(sequence), max(sequence) FROM log").fetchone()
        return (last or 0), (first or (last or 0) + 1)

    def _newest(self, n: int) -> list[bytes]:
        rows = self.store._db.execute("SELECT notification FROM log ORDER BY sequence DESC LIMIT ?", (n,)).fetchall()
        return [r[0] for r in reversed(rows)]

    @property
    def last_sequence(self) -> int:
        return self._last

    @property
    def first_sequence(self) -> int:
        return self._first

    async def load(self) -> int:
        return self._last

    async def append(self, notification: fault_pb2.FaultNotification, *, also: Sequence[Op] = ()) -> int:
        """Store the notification (and apply ``also``, the responder's state writes) in one transaction."""
        seq = self._last + 1
        notification.sequence = seq
        blob = notification.SerializeToString()
        await self.store.run(self._insert, seq, blob, list(also))  # committed before anyone is offered it
        self._last = seq
        self._cache.append(notification)
        if seq - self._first >= self.retention:
            self._first = seq - self.retention + 1
        return seq

    def _insert(self, seq: int, blob: bytes, also: list[Op]) -> None:
        db = self.store._db
        with db:
            db.execute("BEGIN")
            db.execute("INSERT INTO log(sequence, notification) VALUES (?, ?)", (seq, blob))
            for op in also:
                op(db)
            if seq % 100 == 0:  # retention, in batches
                db.execute("DELETE FROM log WHERE sequence <= ?", (seq - self.retention,))

    async def read(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
        if after >= up_to:
            return []
        if after + 1 < self._first:
            raise CursorExpired(after, self._first)
        cached_from = self._cache[0].sequence if self._cache else self._last + 1
        if after + 1 >= cached_from:
            start = after + 1 - cached_from
            return list(islice(self._cache, start, start + up_to - after))
        blobs = await self.store.run(lambda: [r[0] for r in self.store._db.execute(
            "SELECT notification FROM log WHERE sequence > ? AND sequence <= ? ORDER BY sequence",
            (after, up_to))])
        return [fault_pb2.FaultNotification.FromString(b) for b in blobs]


class SqliteRecords:
    """``RecordStore`` for ``SubscriptionBook``: one JSON record per subscription."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def put(self, item_id: str, item: Any) -> None:
        await self.store.run(lambda: self.store._db.execute(
            "INSERT INTO subscriptions(id, record) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET record=excluded.record",
            (item_id, json.dumps(item))))

    async def delete(self, item_id: str) -> None:
        await self.store.run(lambda: self.store._db.execute("DELETE FROM subscriptions WHERE id=?", (item_id,)))

    async def items(self) -> dict[str, Any]:
        rows = await self.store.run(lambda: self.store._db.execute("SELECT id, record FROM subscriptions").fetchall())
        return {rid: json.loads(rec) for rid, rec in rows}


class SqliteState:
    """Keyed JSON values by kind (alarms, hosts, incidents, steps) for the standalone responder's durable state
    (``inspector/response/durable.py``): written alone, or as ops inside a log append."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    @staticmethod
    def put_op(kind: str, item_id: str, value: Any) -> Op:
        data = json.dumps(value)

        def put(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO state(kind, id, value) VALUES (?, ?, ?) "
                       "ON CONFLICT(kind, id) DO UPDATE SET value=excluded.value", (kind, item_id, data))
        return put

    @staticmethod
    def delete_op(kind: str, item_id: str) -> Op:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM state WHERE kind=? AND id=?", (kind, item_id))
        return delete

    @staticmethod
    def delete_prefix_op(kind: str, prefix: str) -> Op:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM state WHERE kind=? AND substr(id, 1, ?)=?", (kind, len(prefix), prefix))
        return delete

    async def apply(self, *ops: Op) -> None:
        def tx() -> None:
            db = self.store._db
            with db:
                db.execute("BEGIN")
                for op in ops:
                    op(db)
        await self.store.run(tx)

    async def items(self, kind: str) -> dict[str, Any]:
        rows = await self.store.run(lambda: self.store._db.execute(
            "SELECT id, value FROM state WHERE kind=? ORDER BY rowid", (kind,)).fetchall())
        return {rid: json.loads(value) for rid, value in rows}

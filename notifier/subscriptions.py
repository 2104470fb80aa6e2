"""Subscriptions that outlive their streams: who subscribed, with which filter, and how far they got.

The leader persists a record per subscription (id, principal, filter, last
delivered sequence) when its stream starts and when it ends, in etcd when the
inspector runs with one. A new leader loads them, so Diagnostics lists them
and a consumer that resumes (its SubscribeRequest names the id) is recognised
as the same subscription. Without etcd the records live in this process.
A record whose consumer stayed away longer than ``expiry_s`` is forgotten.
A replica that does not lead serves subscriptions too (``local_only``): it
cannot write under the leader's token, so it keeps their records in memory.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from doctor_common.auth import Principal
from doctor_common.shielded import shielded
from notifier.registry import Subscriber

log = logging.getLogger("doctor.notifier.subscriptions")


@dataclass
class SubscriptionRecord:
    id: str
    name: str
    project: str | None
    admin: bool
    filter: bytes                 # the serialized SubscribeFilter
    created_unix: float
    last_delivered: int = 0
    connected: bool = False
    detached_unix: float = 0.0

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.project, self.admin)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["filter"] = base64.b64encode(self.filter).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SubscriptionRecord":
        return cls(id=str(d["id"]), name=str(d["name"]), project=d.get("project"), admin=bool(d.get("admin")),
                   filter=base64.b64decode(d.get("filter", "")), created_unix=float(d.get("created_unix", 0)),
                   last_delivered=int(d.get("last_delivered", 0)), connected=bool(d.get("connected")),
                   detached_unix=float(d.get("detached_unix", 0)))


class RecordStore(Protocol):
    """The part of ``inspector.ha.etcd_store.Collection`` used here (fenced writes)."""

    async def put(self, item_id: str, item: Any) -> None: ...

    async def delete(self, item_id: str) -> None: ...

    async def items(self) -> dict[str, Any]: ...


class SubscriptionBook:
    def __init__(self, store: RecordStore | None = None, expiry_s: float = 86400.0) -> None:
        self.store = store
        self.expiry_s = expiry_s
        self.records: dict[str, SubscriptionRecord] = {}
        self.epoch = 0                          # bumped by clear(): streams of an older term write nothing
        self.local_only = False                 # a replica that does not lead: records in memory, not in the store
        self._live: dict[str, Subscriber] = {}  # id -> the stream currently serving it
        # ids of records whose consumer left, oldest first: pruning looks only at the front (10,000 consumers
        # leaving cost 10,000 steps, not 10,000²)
        self._detached: dict[str, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Read every record (a new term): none is connected to this leader yet; drop the expired ones."""
        self.clear()
        epoch = self.epoch
        raw = await self.store.items() if self.store is not None else {}
        now = time.time()
        records = {}
        for rid, d in raw.items():
            rec = SubscriptionRecord.from_json(d)
            rec.connected = False
            rec.detached_unix = rec.detached_unix or now
            records[rid] = rec
        if epoch == self.epoch:
            self.records = records
            self._detached = dict.fromkeys(sorted(records, key=lambda rid: records[rid].detached_unix))
            await self._prune(now)

    def follow_all(self, records: dict[str, dict[str, Any]]) -> None:
        """A replica that does not lead mirrors the leader's records (``inspector/ha/replica_feed.py``), so a
        consumer resuming here is recognised; the streams it serves itself keep theirs."""
        for rid, d in records.items():
            try:
                self.follow(rid, d)
            except (KeyError, TypeError, ValueError) as exc:  # another version's record: skipped, not fatal
                log.error("ignoring the subscription record %s: %s", rid, exc)
        for rid in [r for r in self.records if r not in records and r not in self._live]:
            del self.records[rid]

    def follow(self, sub_id: str, data: dict[str, Any] | None) -> None:
        if sub_id in self._live:
            return  # served here: this replica's own record is the newer one
        if data is None:
            self.records.pop(sub_id, None)
        else:
            self.records[sub_id] = SubscriptionRecord.from_json(data)

    def clear(self) -> None:
        self.epoch += 1
        self.records.clear()
        self._live.clear()
        self._detached.clear()

    def resumable(self, sub_id: str, principal: Principal) -> SubscriptionRecord | None:
        """The known subscription ``sub_id`` if it belongs to ``principal`` (anything else: a new one)."""
        rec = self.records.get(sub_id)
        return rec if rec is not None and rec.principal == principal else None

    async def attach(self, sub: Subscriber, filter_blob: bytes) -> None:
        """A stream serves ``sub`` from now on: persist (raises when the write is refused)."""
        epoch = self.epoch
        old = self.records.get(sub.id)
        rec = SubscriptionRecord(sub.id, sub.principal.name, sub.principal.project, sub.principal.admin, filter_blob,
                                 old.created_unix if old else time.time(), max(sub.last_delivered,
                                                                               old.last_delivered if old else 0),
                                 connected=True)
        if self.store is not None and not self.local_only:
            await shielded(self.store.put(sub.id, rec.to_json()))
        if epoch == self.epoch:
            self.records[sub.id] = rec
            self._live[sub.id] = sub
            self._detached.pop(sub.id, None)

    def detach(self, sub: Subscriber) -> None:
        """The stream of ``sub`` ended: remember how far it got (written in the background)."""
        rec = self.records.get(sub.id)
        if rec is None or self._live.get(sub.id) is not sub:
            return  # an older term's stream, or one a newer stream of the same subscription replaced
        del self._live[sub.id]
        rec.connected, rec.detached_unix = False, time.time()
        rec.last_delivered = max(rec.last_delivered, sub.last_delivered)
        self._detached.pop(sub.id, None)
        self._detached[sub.id] = None  # the newest to leave
        if self.store is not None and not self.local_only:
            self._background(self.store.put(sub.id, rec.to_json()), f"detach of subscription {sub.id}")
        self._background(self._prune(time.time()), "pruning subscriptions")

    def detached(self) -> list[SubscriptionRecord]:
        return [r for r in self.records.values() if r.id not in self._live]

    async def _prune(self, now: float) -> None:
        """Forget the records whose consumer stayed away longer than ``expiry_s`` (the oldest leavers first)."""
        expired = []
        for rid in self._detached:
            rec = self.records.get(rid)
            if rec is not None and not rec.connected and now - rec.detached_unix <= self.expiry_s:
                break
            expired.append(rid)  # expired, gone, or connected again (a stale place in the order: dropped)
        for rid in expired:
            self._detached.pop(rid, None)
            rec = self.records.get(rid)
            if rec is None or rec.connected or rid in self._live:
                continue  # back meanwhile (this loop awaits the store): its record is live
            gone = self.records.pop(rid)
            if self.store is not None and not self.local_only:
                await self.store.delete(rid)
            log.info("subscription %s (%s) expired: its consumer stayed away %.0fs", rid, gone.name,
                     now - gone.detached_unix)

    def _background(self, coro: Any, what: str) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.info("%s not written: %s", what, t.exception())  # not leading any more: the next leader knows
        task.add_done_callback(done)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

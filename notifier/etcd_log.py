"""The sequenced notification log in etcd (DESIGN principle 5: nothing is lost).

Implements ``notifier.log.NotificationLog`` so a new leader continues the
sequence where the old one stopped, and notifier replicas can serve resumes.

Keys under the cluster prefix ``P``::

    P/log/last        the last sequence number, decimal ASCII
    P/log/e/<seq>     one serialized FaultNotification, seq zero-padded to 20 digits

``append`` is one fenced transaction (``Guard.txn``: only the leader's token
can write) that compares ``P/log/last`` with the sequence it expects, puts
the entry and the new counter, and deletes what falls out of retention. So
sequences are gap-free and never assigned twice, even across leaders. A write
whose outcome is unknown (deadline, etcd failover) is retried with the same
expected sequence; if the first try had been applied, the compare fails, the
entry at that sequence is ours byte for byte, and the append reports it once.

``read(after, up_to)`` reads at one etcd revision (pages stay consistent) and
raises ``CursorExpired`` when ``after + 1`` was trimmed away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aetcd
from aetcd import rpc
from aetcd.utils import prefix_range_end

from doctor_common.api import fault_pb2
from doctor_common.etcd_guard import TRANSIENT, EtcdError, EtcdUnavailable, Guard, NotLeader
from notifier.log import CursorExpired

_DIGITS = 20  # a uint64 in decimal


class LogConflict(EtcdError):
    """The counter kept moving under a leader that holds the token: another writer shares it."""


class EtcdLog:
    def __init__(self, client: aetcd.Client, prefix: str, *, retention: int = 10_000, guard: Guard | None = None,
                 call_timeout_s: float = 2.5, write_deadline_s: float = 6.0, page: int = 500) -> None:
        if retention < 1:
            raise ValueError("retention must be at least 1")
        self.client = client
        self.retention = retention
        self.guard = guard
        self.call_timeout_s = call_timeout_s
        self.write_deadline_s = write_deadline_s
        self.page = page
        self.prefix = (prefix.rstrip("/") + "/").encode()  # the cluster's (replicas watch it whole)
        base = prefix.rstrip("/") + "/log/"
        self.last_key = (base + "last").encode()
        self.entry_prefix = (base + "e/").encode()
        self._last = 0
        self._lock = asyncio.Lock()

    def entry_key(self, seq: int) -> bytes:
        return self.entry_prefix + str(seq).zfill(_DIGITS).encode()

    @property
    def last_sequence(self) -> int:
        """The last sequence this process knows of (``load``/``refresh`` to catch up with etcd)."""
        return self._last

    async def load(self) -> int:
        """Read the counter (call when becoming leader, or on a replica before serving)."""
        kvs, _, _ = await self.range(self.last_key, None, limit=1)
        self._last = max(self._last, int(kvs[0].value) if kvs else 0)
        return self._last

    refresh = load

    # -- append ---------------------------------------------------------------
    async def append(self, notification: fault_pb2.FaultNotification, *, also: Sequence[Any] = ()) -> int:
        """``also``: more (fenced) operations applied in the same transaction as the entry, e.g. the recovery
        journal's "notify" step, so the step is recorded if and only if the notification is in the log."""
        if self.guard is None:
            raise NotLeader("this log is read-only (no leadership guard)")
        t = self.client.transactions
        async with self._lock:  # one append at a time: each needs the previous one's number
            deadline = time.monotonic() + self.write_deadline_s
            expected, conflicts, delay = self._last, 0, 0.02
            while True:
                seq = expected + 1
                notification.sequence = seq
                blob = notification.SerializeToString(deterministic=True)
                compare = [t.value(self.last_key) == str(expected)] if expected else [t.version(self.last_key) == 0]
                success = [t.put(self.last_key, str(seq).encode()), t.put(self.entry_key(seq), blob), *also]
                if seq > self.retention:
                    success.append(t.delete(self.entry_key(0), range_end=self.entry_key(seq - self.retention + 1)))
                try:
                    ok, resp = await self.guard.txn(compare, success, [t.get(self.last_key), t.get(self.entry_key(seq))])
                except EtcdUnavailable:
                    if time.monotonic() + delay >= deadline:
                        notification.sequence = 0
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue  # same expected: an applied first try shows up as "ours" below
                except NotLeader:
                    notification.sequence = 0
                    raise
                if ok:
                    self._last = seq
                    return seq
                last_kvs, entry_kvs = resp[0].response_range.kvs, resp[1].response_range.kvs
                current = int(last_kvs[0].value) if last_kvs else 0
                if current >= seq and entry_kvs and entry_kvs[0].value == blob:
                    self._last = current
                    return seq  # an earlier try of this very append was applied
                conflicts += 1
                if conflicts > 3:
                    notification.sequence = 0
                    raise LogConflict(f"{self.last_key!r} moved {conflicts} times under our token")
                expected = current  # we were behind (new leader, no load()): continue from etcd's counter

    # -- read -----------------------------------------------------------------
    async def read(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        if after >= up_to:
            return []
        for attempt in range(3):
            try:
                return await self._read_at_one_revision(after, up_to)
            except _Compacted:
                if attempt == 2:
                    raise EtcdUnavailable("the log's revision kept being compacted while reading") from None
        raise AssertionError("unreachable")

    async def _read_at_one_revision(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
        end = self.entry_key(up_to + 1)
        kvs, more, rev = await self.range(self.entry_key(after + 1), end, limit=self.page)
        if not kvs or _seq(kvs[0].key) != after + 1:
            oldest, _, _ = await self.range(self.entry_prefix, prefix_range_end(self.entry_prefix), 1, rev)
            counter, _, _ = await self.range(self.last_key, None, 1, rev)
            last = int(counter[0].value) if counter else 0
            self._last = max(self._last, last)
            first = _seq(oldest[0].key) if oldest else last + 1
            if after + 1 < first:
                raise CursorExpired(after, first)
            if after >= last:
                return []
            raise EtcdError(f"log entry {after + 1} is missing although {first}..{last} are kept")
        out = [_decode(kv) for kv in kvs]
        while more:  # bounded: each page advances by `page` entries towards up_to
            kvs, more, _ = await self.range(kvs[-1].key + b"\0", end, self.page, rev)
            out.extend(_decode(kv) for kv in kvs)
        for i, n in enumerate(out):
            if n.sequence != after + 1 + i:
                raise EtcdError(f"log gap: expected sequence {after + 1 + i}, found {n.sequence}")
        self._last = max(self._last, out[-1].sequence)
        return out

    async def range(self, key: bytes, range_end: bytes | None, limit: int = 0,
                    revision: int = 0) -> tuple[list[Any], bool, int]:
        """One Range call at ``revision`` (0: latest): (kvs, more, header revision)."""
        req = rpc.RangeRequest(key=key, limit=limit, revision=revision,
                               sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.KEY)
        if range_end is not None:
            req.range_end = range_end
        try:
            await self.client.connect()
            resp = await self.client.kvstub.Range(req, timeout=self.call_timeout_s, metadata=self.client.metadata)
        except rpc.AioRpcError as exc:
            if exc.code() == rpc.StatusCode.OUT_OF_RANGE:
                raise _Compacted() from exc
            raise EtcdUnavailable(f"cannot read the log: {exc.details()}") from exc
        except TRANSIENT as exc:
            raise EtcdUnavailable(f"cannot read the log: {exc}") from exc
        return list(resp.kvs), resp.more, resp.header.revision


class _Compacted(Exception):
    pass


def _seq(key: bytes) -> int:
    return int(key.rsplit(b"/", 1)[1])


def _decode(kv: Any) -> fault_pb2.FaultNotification:
    n = fault_pb2.FaultNotification.FromString(kv.value)
    if n.sequence != _seq(kv.key):
        raise EtcdError(f"log entry {kv.key!r} holds sequence {n.sequence}")
    return n

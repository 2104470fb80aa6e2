"""What a replica that does not lead serves consumers from: the leader's log and alarms, followed in etcd.

With ``[etcd]`` every replica serves Subscribe and QueryFaults (docs/ha.md,
"Consumers on every replica"); only the leader decides and writes. The
leader appends each notification in one transaction with the alarm records
it changes (``inspector/response/durable.py``), so one watch on the cluster
prefix brings both in etcd's revision order. The feed applies a batch's
alarm changes before it delivers the batch's entries: what this replica
shows in a snapshot or a QueryFaults is never older than the last
notification it delivered.

Start: one consistent read (the alarms and the log's counter at one
revision), the entries from where this replica's subscribers are up to that
counter, then the watch from the next revision. An entry whose predecessor
did not come (events lost when the stream broke) is preceded by a read of
the gap. When nothing arrives for ``check_s`` the counter is read
(linearizable): an entry logged but still not watched at the next such check
means the watch is stuck, and the feed starts over. The replica is *fresh* while its last
successful read or event is at most ``stale_s`` old; a replica that lost
sight of etcd stops serving (``on_fresh(False)``: its subscribers are sent
to another replica with their resume cursors) rather than serve silence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aetcd.utils import prefix_range_end

from doctor_common.api import fault_pb2
from notifier.etcd_log import EtcdLog
from notifier.log import CursorExpired

log = logging.getLogger("doctor.inspector.feed")

READ_CHUNK = 1000  # entries per catch-up read: bounded memory however far behind


class WatchStuck(Exception):
    pass


@dataclass(frozen=True)
class Followed:
    """A collection of JSON records the leader keeps under ``prefix`` (alarms, subscriptions), mirrored here."""
    prefix: bytes
    replace: Callable[[dict[str, dict[str, Any]]], None]     # every record, at the start of a follow
    changed: Callable[[str, dict[str, Any] | None], None]    # one record put (its JSON) or deleted (None)


class ReplicaFeed:
    def __init__(self, log_: EtcdLog, followed: Sequence[Followed], *,
                 deliver: Callable[[fault_pb2.FaultNotification], None],
                 position: Callable[[], int],
                 skip_to: Callable[[int], None],
                 idle: Callable[[], bool] = lambda: False,
                 on_fresh: Callable[[bool], None] = lambda _fresh: None,
                 check_s: float = 1.0, stale_s: float = 3.0) -> None:
        self.log = log_
        self.followed = tuple(followed)
        self.deliver = deliver                # fan one entry out (it moves ``position``)
        self.position = position              # the last sequence this replica's subscribers were offered
        self.skip_to = skip_to                # (seq): entries up to it will not be delivered (trimmed, or no one
        self.idle = idle                      # listens: nobody subscribed here needs them)
        self.on_fresh = on_fresh
        self.check_s = check_s
        self.stale_s = stale_s
        self.delivered = 0
        self.restarts = 0
        self._confirmed = 0.0
        self._missing: int | None = None  # the first entry logged but not yet watched at the last idle check
        self._was_fresh = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()           # one reader delivers at a time (the follow, or a leader's catch-up)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def fresh(self) -> bool:
        return self.running and time.monotonic() - self._confirmed <= self.stale_s

    def _confirm(self) -> None:
        self._confirmed = time.monotonic()
        if not self._was_fresh:
            self._was_fresh = True
            self.on_fresh(True)

    def _check_stale(self) -> None:
        if self._was_fresh and not self.fresh():
            self._was_fresh = False
            self.on_fresh(False)

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self, *, vouch: bool = False) -> None:
        """Follow the log. ``vouch``: this replica's subscribers are current (it led until now), so it counts as
        fresh until a read fails for ``stale_s`` — and then its subscribers are sent away, not kept waiting."""
        if not self.running:
            if vouch:
                self._confirmed, self._was_fresh = time.monotonic(), True
            task = self._task = asyncio.create_task(self._run(), name="replica feed")
            task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._task is task:  # not stopped by stop(): its subscribers must not wait for entries that never come
            self._task = None
            if not task.cancelled() and task.exception() is not None:
                log.error("the replica feed ended", exc_info=task.exception())
            if self._was_fresh:
                self._was_fresh = False
                self.on_fresh(False)

    async def stop(self) -> None:
        """Stop following (this replica leads now: it fans out what it appends itself)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: a cancel landing while aetcd creates the watch can leave it waiting on its stream
            await asyncio.wait([task], timeout=1.0)
        self._was_fresh = False

    async def catch_up(self, up_to: int) -> int:
        """Deliver the entries after ``position()`` up to ``up_to`` (a new leader, before it publishes)."""
        async with self._lock:
            return await self._read_entries(up_to)

    # -- following -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while True:
            started = time.monotonic()
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd unreachable, a watch that died: start over
                self.restarts += 1
                log.warning("following the log failed (%s: %s); starting over in %.2fs", type(exc).__name__, exc,
                            delay)
            self._check_stale()
            await asyncio.sleep(delay)
            delay = 0.05 if time.monotonic() - started > 5 else min(delay * 2, 1.0)

    async def _follow(self) -> None:
        self._missing = None
        revision = await self._snapshot()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        watcher = asyncio.create_task(self._watch(revision + 1, queue), name="replica feed watch")
        checked = time.monotonic()
        try:
            while True:
                try:  # asyncio.timeout, not wait_for (gh-86296)
                    async with asyncio.timeout(self.check_s):
                        first = await queue.get()
                except TimeoutError:
                    await self._check(idle=True)
                    checked = time.monotonic()
                    continue
                batch = [first]
                while not queue.empty():  # one etcd response's events arrive together: a revision is whole
                    batch.append(queue.get_nowait())
                await self._apply(batch)
                if time.monotonic() - checked >= self.check_s:
                    await self._check(idle=False)
                    checked = time.monotonic()
        finally:
            watcher.cancel()
            await asyncio.wait([watcher], timeout=1.0)

    async def _snapshot(self) -> int:
        """The log's counter and every followed record at one revision; the entries up to that counter.
        Returns the revision."""
        counter, _, revision = await self.log.range(self.log.last_key, None, 1)
        last = int(counter[0].value) if counter else 0
        collections = []
        for f in self.followed:
            kvs, _, _ = await self.log.range(f.prefix, prefix_range_end(f.prefix), 0, revision)
            records = {}
            for kv in kvs:
                data = _json(kv.key, kv.value)
                if data is not None:
                    records[kv.key[len(f.prefix):].decode()] = data
            collections.append((f, records))
        async with self._lock:
            for f, records in collections:
                f.replace(records)  # each collection's owner skips a record it cannot read
            await self._read_entries(last)
        self._confirm()
        return revision

    async def _watch(self, start: int, queue: asyncio.Queue[Any]) -> None:
        prefix = self.log.prefix
        try:
            await self.log.client.connect()
            watch = await self.log.client.watch(prefix, range_end=prefix_range_end(prefix), start_revision=start)
            try:
                async for ev in watch:
                    key = ev.kv.key
                    if key.startswith(self.log.entry_prefix):
                        if ev.kind == "PUT":  # a DELETE is the log trimming its tail
                            queue.put_nowait(("entry", ev.kv.value))
                    elif (f := self._followed_by(key)) is not None:
                        queue.put_nowait(("record", f, key, None if ev.kind == "DELETE" else ev.kv.value))
                    else:
                        queue.put_nowait(("other",))  # the leader is alive and etcd answers
            finally:
                await watch.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - aetcd watches die on any stream error and never resume
            queue.put_nowait(("error", exc))
        else:
            queue.put_nowait(("error", WatchStuck("the watch ended")))

    async def _apply(self, batch: list[Any]) -> None:
        entries: list[fault_pb2.FaultNotification] = []
        error: Exception | None = None
        for item in batch:
            if item[0] == "record":
                _, f, key, value = item
                data = None if value is None else _json(key, value)
                if value is None or data is not None:
                    try:
                        f.changed(key[len(f.prefix):].decode(), data)
                    except Exception:  # noqa: BLE001 - one unreadable record (another version's) must not stop the feed
                        log.exception("ignoring the record %r", key)
            elif item[0] == "entry":
                entries.append(fault_pb2.FaultNotification.FromString(item[1]))
            elif item[0] == "error":
                error = item[1]
                break
        async with self._lock:
            for n in entries:  # after the alarms of their revision
                if n.sequence <= self.position():
                    continue
                if n.sequence > self.position() + 1:
                    await self._read_entries(n.sequence - 1)  # a gap: read what the watch did not bring
                self.deliver(n)
                self.delivered += 1
        if error is not None:
            raise error
        self._confirm()

    def _followed_by(self, key: bytes) -> Followed | None:
        for f in self.followed:
            if key.startswith(f.prefix):
                return f
        return None

    async def _check(self, *, idle: bool) -> None:
        last = await self.log.load()
        if idle and last > self.position():
            # an append may land just as the idle timer fires: stuck only if the same entry is still missing at
            # the next check, a whole interval later
            if self._missing is not None and self._missing <= last and self._missing > self.position():
                raise WatchStuck(f"entry {self._missing} is logged but was not watched within "
                                 f"{self.check_s:.1f}s")
            self._missing = self.position() + 1
            return
        self._missing = None
        self._confirm()

    async def _read_entries(self, up_to: int) -> int:
        """Deliver the logged entries after ``position()`` up to ``up_to``, in chunks; returns how many."""
        if self.idle() and self.position() < up_to:
            self.skip_to(up_to)  # no subscriber here: nothing to relay (a replica starting beside a long log)
            return 0
        count = 0
        while self.position() < up_to:  # bounded: each read advances or raises
            after = self.position()
            try:
                entries = await self.log.read(after, min(up_to, after + READ_CHUNK))
            except CursorExpired as exc:
                log.warning("this replica's subscribers were offered up to %d; the log keeps %d on: they resync",
                            after, exc.first)
                self.skip_to(exc.first - 1)
                continue
            if not entries:
                break
            for n in entries:
                self.deliver(n)
            count += len(entries)
            self.delivered += len(entries)
        return count


def _json(key: bytes, value: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(value)
    except ValueError:
        log.error("ignoring %r: not JSON", key)
        return None
    return data if isinstance(data, dict) else None

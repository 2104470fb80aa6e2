"""Live subscriptions and the fan-out to them.

Each subscriber owns a bounded queue. Publishing never waits: a subscriber
whose queue is full is marked overflowed and its stream ends with
RESOURCE_EXHAUSTED, telling it where to resume (DESIGN principle 5). A
replica that stops leading ends every stream the same way (``end_all``), with
UNAVAILABLE and the new leader's address.

The fan-out visits only the subscribers who may see a notification — the
administrators and the projects it names — so thousands of other projects'
idle subscribers cost nothing on the publish path. Subscribers of one
project with one filter share one view, serialized once (``wire.Delivery``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import deque

from doctor_common.api import fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter, view_notification
from notifier.wire import ITEM_OVERHEAD, MAX_BATCH, Delivery, delivery

log = logging.getLogger("doctor.notifier")

FELL_BEHIND, NOT_LEADER, REPLACED, REVOKED = "fell_behind", "not_leader", "replaced", "revoked"
UNSERVED = "unserved"  # this replica lost sight of the log (etcd): the consumer goes to another one


class Subscriber:
    """One live stream's subscription: its identity and filter, its queue of deliveries, and why it must end."""

    __slots__ = ("principal", "filter", "limit", "max_batch", "id", "start_sequence", "last_delivered", "delivered",
                 "ended_by", "credential", "leader_hint", "task", "writing", "_items", "_waiter")

    def __init__(self, principal: Principal, flt: Filter, limit: int, start_sequence: int = 0,
                 max_batch: int = 1) -> None:
        self.principal = principal
        self.filter = flt
        self.limit = limit
        self.max_batch = max_batch  # deliveries one stream message may carry (the consumer's max_batch, bounded)
        self.id = uuid.uuid4().hex
        self.start_sequence = start_sequence  # live entries start after this one
        self.last_delivered = 0
        self.delivered = 0
        self.ended_by = ""          # why the stream must end: FELL_BEHIND, NOT_LEADER, REPLACED, REVOKED, UNSERVED
        self.credential = b""       # the digest of the token it was opened with (a reload may withdraw it)
        self.leader_hint = ""       # with NOT_LEADER: where the consumer should go
        self.task: asyncio.Task[object] | None = None  # the handler serving it (interrupted in a blocked write)
        self.writing = False        # the handler is in a write (a client that stops reading blocks it there)
        self._items: deque[Delivery] | None = None  # made on the first delivery: an idle subscriber keeps none
        self._waiter: asyncio.Future[None] | None = None

    @property
    def overflowed(self) -> bool:
        return self.ended_by == FELL_BEHIND

    @property
    def depth(self) -> int:
        return len(self._items) if self._items is not None else 0

    def end(self, reason: str, leader_hint: str = "") -> None:
        """End the stream now: a handler waiting for a delivery wakes, one blocked writing to a client that does
        not read is interrupted (the stream then ends with a status saying why and where to resume)."""
        if self.ended_by:
            return
        self.ended_by, self.leader_hint = reason, leader_hint
        self._items = None
        self._wake()
        if self.writing and self.task is not None and not self.task.done():
            self.task.cancel()

    def offer(self, item: Delivery) -> bool:
        """Queue the delivery; False when this offer cut the subscriber off (its queue was full)."""
        if self.ended_by:
            return True
        if self._items is None:
            self._items = deque()
        elif len(self._items) >= self.limit:
            self.end(FELL_BEHIND)
            log.warning("subscription %s (%s) fell %d notifications behind: cutting it off",
                        self.id, self.principal.name, self.limit)
            return False
        self._items.append(item)
        self._wake()
        return True

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next(self) -> Delivery | None:
        """The next delivery; None once the stream must end (``ended_by`` says why)."""
        while not self._items and not self.ended_by:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.ended_by or not self._items:
            return None
        return self._items.popleft()

    def take_queued(self, count: int, budget: int) -> list[Delivery]:
        """Up to ``count`` more queued deliveries whose bytes fit in ``budget`` (what a batch may add now)."""
        out: list[Delivery] = []
        items = self._items
        while items and len(out) < count and len(items[0].data) + ITEM_OVERHEAD <= budget:
            budget -= len(items[0].data) + ITEM_OVERHEAD
            out.append(items.popleft())
        return out

    def take_nowait(self) -> Delivery | None:
        """The next queued delivery, if any (tests and Diagnostics)."""
        return self._items.popleft() if self._items else None


class Registry:
    def __init__(self, queue_limit: int = 1000) -> None:
        self.queue_limit = queue_limit
        self._subs: dict[str, Subscriber] = {}
        self._admins: dict[str, Subscriber] = {}
        self._by_project: dict[str, dict[str, Subscriber]] = {}
        self.last_sequence = 0  # the last entry offered: a subscriber registered now gets what follows it
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.cut_off = 0  # subscribers cut off for falling behind, since start (metrics)

    async def reached(self, sequence: int, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the entry ``sequence`` has been offered (a replica following the
        log may be a moment behind the replica a consumer comes from)."""
        if self.last_sequence >= sequence:
            return True
        fut = asyncio.get_running_loop().create_future()
        entry = (sequence, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            pass
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
        return self.last_sequence >= sequence

    def skip_to(self, sequence: int) -> None:
        """Entries up to ``sequence`` will never be offered (trimmed before this replica read them): every
        stream ends as fallen behind, naming its cursor; resuming from it tells the consumer to resync."""
        for sub in list(self._subs.values()):
            sub.end(FELL_BEHIND)
        self.last_sequence = max(self.last_sequence, sequence)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        if self._waiters:
            for seq, fut in self._waiters:
                if seq <= self.last_sequence and not fut.done():
                    fut.set_result(None)

    def add(self, principal: Principal, flt: Filter, start_sequence: int, sub_id: str = "",
            max_batch: int = 1) -> Subscriber:
        """A live subscriber; ``sub_id`` resumes a known subscription (a stream still open under it is ended)."""
        sub = Subscriber(principal, flt, self.queue_limit, start_sequence=start_sequence,
                         max_batch=max(1, min(max_batch, MAX_BATCH)))
        if sub_id:
            sub.id = sub_id
            old = self._subs.get(sub_id)
            if old is not None:
                old.end(REPLACED)
                self.remove(old)
        self._subs[sub.id] = sub
        if principal.admin:
            self._admins[sub.id] = sub
        elif principal.project is not None:
            self._by_project.setdefault(principal.project, {})[sub.id] = sub
        return sub

    def remove(self, sub: Subscriber) -> None:
        if self._subs.get(sub.id) is not sub:
            return
        del self._subs[sub.id]
        self._admins.pop(sub.id, None)
        project = sub.principal.project
        if project is not None and project in self._by_project:
            mine = self._by_project[project]
            mine.pop(sub.id, None)
            if not mine:
                del self._by_project[project]  # a project whose last subscriber left costs nothing either

    def get(self, sub_id: str) -> Subscriber | None:
        return self._subs.get(sub_id)

    def end_all(self, reason: str, leader_hint: str = "") -> int:
        """End every live stream (this replica stopped leading); returns how many."""
        subs = list(self._subs.values())
        self._subs.clear()
        self._admins.clear()
        self._by_project.clear()
        for sub in subs:
            sub.end(reason, leader_hint)
        return len(subs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._subs.values()))

    def __len__(self) -> int:
        return len(self._subs)

    def fan_out(self, notification: fault_pb2.FaultNotification) -> int:
        """Offer the notification to every subscriber that may and wants to see it; return how many got it.
        Only administrators and the projects the notification names are visited; one view (and one
        serialization) per project and filter. An entry offered already (a replica that followed the log and
        then led, or the reverse) is not offered again."""
        if notification.sequence:
            if notification.sequence <= self.last_sequence:
                return 0
            self.last_sequence = notification.sequence
            self._wake_waiters()
        projects = {v.project_id for v in notification.virtual_resource_info}
        groups = [self._admins.values(), *(self._by_project[p].values() for p in projects if p in self._by_project)]
        views: dict[tuple[str | None, bool, Filter], Delivery | None] = {}
        count = 0
        for sub in itertools.chain(*groups):
            if notification.sequence <= sub.start_sequence:
                # logged before the subscriber registered (the log's counter had moved, the fan-out had not
                # happened yet): its replay from the log delivers it; offering it live would repeat it
                continue
            p = sub.principal
            key = (p.project, p.admin, sub.filter)  # a view depends on what the principal owns, not its name
            if key not in views:
                view = view_notification(p, sub.filter, notification)
                views[key] = delivery(view) if view is not None else None
            item = views[key]
            if item is not None:
                if not sub.offer(item):
                    self.cut_off += 1
                count += 1
        return count

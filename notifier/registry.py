"""Live subscriptions and the fan-out to them.

Each subscriber owns a bounded queue. Publishing never waits: a subscriber
whose queue is full is marked overflowed and its stream ends with
RESOURCE_EXHAUSTED, telling it where to resume (DESIGN principle 5). A
replica that stops leading ends every stream the same way (``end_all``), with
UNAVAILABLE and the new leader's address.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from doctor_common.api import fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter, view_notification

log = logging.getLogger("doctor.notifier")

OVERFLOW = object()  # queue sentinel: the stream must end (the consumer fell behind, or see ``ended_by``)

FELL_BEHIND, NOT_LEADER, REPLACED, REVOKED = "fell_behind", "not_leader", "replaced", "revoked"


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    filter: Filter
    limit: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    start_sequence: int = 0       # live entries start after this one
    last_delivered: int = 0
    delivered: int = 0
    cut: asyncio.Event = field(default_factory=asyncio.Event)  # set on overflow: end the stream now
    ended_by: str = ""            # why the stream must end: FELL_BEHIND, NOT_LEADER, REPLACED or REVOKED
    credential: bytes = b""       # the digest of the token it was opened with (a reload may withdraw it)
    leader_hint: str = ""         # with NOT_LEADER: where the consumer should go

    @property
    def overflowed(self) -> bool:
        return self.ended_by == FELL_BEHIND

    def end(self, reason: str, leader_hint: str = "") -> None:
        """End the stream now (its handler may be blocked writing to a client that does not read)."""
        if self.ended_by:
            return
        self.ended_by, self.leader_hint = reason, leader_hint
        self.queue.put_nowait(OVERFLOW)
        self.cut.set()

    def offer(self, item: fault_pb2.FaultNotification) -> None:
        if self.ended_by:
            return
        if self.queue.qsize() >= self.limit:
            self.end(FELL_BEHIND)
            log.warning("subscription %s (%s) fell %d notifications behind: cutting it off",
                        self.id, self.principal.name, self.limit)
            return
        self.queue.put_nowait(item)


class Registry:
    def __init__(self, queue_limit: int = 1000) -> None:
        self.queue_limit = queue_limit
        self._subs: dict[str, Subscriber] = {}

    def add(self, principal: Principal, flt: Filter, start_sequence: int, sub_id: str = "") -> Subscriber:
        """A live subscriber; ``sub_id`` resumes a known subscription (a stream still open under it is ended)."""
        sub = Subscriber(principal, flt, self.queue_limit, start_sequence=start_sequence)
        if sub_id:
            sub.id = sub_id
            old = self._subs.get(sub_id)
            if old is not None:
                old.end(REPLACED)
        self._subs[sub.id] = sub
        return sub

    def remove(self, sub: Subscriber) -> None:
        if self._subs.get(sub.id) is sub:
            del self._subs[sub.id]

    def get(self, sub_id: str) -> Subscriber | None:
        return self._subs.get(sub_id)

    def end_all(self, reason: str, leader_hint: str = "") -> int:
        """End every live stream (this replica stopped leading); returns how many."""
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub.end(reason, leader_hint)
        return len(subs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._subs.values()))

    def __len__(self) -> int:
        return len(self._subs)

    def fan_out(self, notification: fault_pb2.FaultNotification) -> int:
        """Offer the notification to every subscriber that may and wants to see it; return how many got it."""
        views: dict[tuple[Principal, Filter], fault_pb2.FaultNotification | None] = {}
        count = 0
        for sub in self._subs.values():
            if notification.sequence <= sub.start_sequence:
                # logged before the subscriber registered (the log's counter had moved, the fan-out had not
                # happened yet): its replay from the log delivers it; offering it live would repeat it
                continue
            key = (sub.principal, sub.filter)
            if key not in views:  # subscribers with the same identity and filter share one view
                views[key] = view_notification(sub.principal, sub.filter, notification)
            view = views[key]
            if view is not None:
                sub.offer(view)
                count += 1
        return count



"""The sequenced notification log consumers resume from (DESIGN principle 5).

``MemoryLog`` keeps the last ``retention`` notifications in process: enough
for one inspector; the etcd-backed log shares this interface so a new leader
continues the sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any, Protocol

from doctor_common.api import fault_pb2


class CursorExpired(Exception):
    """The consumer's cursor is older than what the log retains: it must resync with QueryFaults."""

    def __init__(self, cursor: int, first: int) -> None:
        self.cursor = cursor
        self.first = first
        super().__init__(
            f"resume_after={cursor} is older than the log's retention (oldest kept: {first}); "
            "resync with QueryFaults and subscribe again with resume_after=0")


class NotificationLog(Protocol):
    @property
    def last_sequence(self) -> int: ...

    async def load(self) -> int:
        """The last sequence as stored (an append that raised may have been applied after all)."""
        ...

    async def append(self, notification: fault_pb2.FaultNotification, *, also: Sequence[Any] = ()) -> int:
        """Assign the next sequence number to the notification, store it, return the number.

        ``also``: storage operations to apply atomically with it (the etcd log's; none in memory).
        """
        ...

    async def read(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
        """Entries with after < sequence <= up_to, in order; CursorExpired when ``after`` fell out of retention."""
        ...


class MemoryLog:
    def __init__(self, retention: int = 10_000, start: int = 0) -> None:
        self.retention = retention
        self._entries: deque[fault_pb2.FaultNotification] = deque(maxlen=retention)
        self._last = start

    @property
    def last_sequence(self) -> int:
        return self._last

    @property
    def first_sequence(self) -> int:
        return self._entries[0].sequence if self._entries else self._last + 1

    async def load(self) -> int:
        return self._last

    async def append(self, notification: fault_pb2.FaultNotification, *, also: Sequence[Any] = ()) -> int:
        if also:
            raise ValueError("MemoryLog cannot apply storage operations")
        self._last += 1
        notification.sequence = self._last
        self._entries.append(notification)
        return self._last

    async def read(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
        if after >= up_to:
            return []
        if after + 1 < self.first_sequence:
            raise CursorExpired(after, self.first_sequence)
        start = after + 1 - self.first_sequence  # sequences are contiguous: positions follow from them
        return list(islice(self._entries, start, start + up_to - after))

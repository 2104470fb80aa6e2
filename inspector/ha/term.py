"""A period of leadership (``Term``) and who leads (``LeaderInfo``), as the election hands them out.

A term is valid until ``lost`` is set; from then on every action must stop.
``Term.run`` awaits a piece of work and cancels it the moment the term is
lost, raising ``NotLeader``: every response of the leader runs under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from doctor_common.etcd_guard import NotLeader

log = logging.getLogger("doctor.inspector.election")
T = TypeVar("T")


@dataclass(frozen=True)
class LeaderInfo:
    node_id: str
    endpoint: str
    token: int              # create revision of the leader key: the fencing token
    lease_id: int
    agent_endpoint: str = ""  # where agents should go, when not ``endpoint`` (e.g. a unix socket)


class Term:
    """One period of leadership. Valid until ``lost`` is set; then every action must stop."""

    def __init__(self, token: int, lease_id: int, granted_ttl: int, renewed_until: float, margin: float) -> None:
        self.token = token
        self.lease_id = lease_id
        self.granted_ttl = granted_ttl
        self.margin = margin
        self.renewed_until = renewed_until          # monotonic: the lease cannot expire before this
        self.started = time.monotonic()
        self.lost = asyncio.Event()
        self.lost_at: float | None = None
        self.reason: str | None = None
        self.definitive = False                     # the lease or key is known to be gone

    @property
    def step_down_at(self) -> float:
        return self.renewed_until - self.margin

    @property
    def valid(self) -> bool:
        return not self.lost.is_set()

    def check(self) -> None:
        if self.lost.is_set():
            raise NotLeader(f"leadership (token {self.token}) was lost: {self.reason}")

    def lose(self, reason: str, *, definitive: bool = False) -> None:
        if self.lost.is_set():
            return
        self.lost_at, self.reason, self.definitive = time.monotonic(), reason, definitive
        self.lost.set()
        log.warning("stepping down (token %d): %s", self.token, reason)

    async def run(self, aw: Awaitable[T]) -> T:
        """Await ``aw``; cancel it and raise ``NotLeader`` if the term is lost first (or already is)."""
        if self.lost.is_set():
            if asyncio.iscoroutine(aw):
                aw.close()  # never started: no "never awaited" warning
            self.check()
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled() and self.lost.is_set():
            self.check()
        return task.result()

"""Bounded admission: at most ``limit`` stream handshakes at once, the rest turned away at once.

After a failover (or a switch that comes back) thousands of agents and
consumers reconnect together. Each handshake costs the server work (a Hello
reconciled, a snapshot built and written); taken all at once they stall the
loop, keepalives and heartbeats go unanswered, clients time out and
reconnect again — a storm that feeds itself. With a bound, the excess is
answered UNAVAILABLE in microseconds ("busy, retry"), the clients back off
with jitter (the agent's transport, ``DoctorClient``), and the storm
converges at the rate the server can admit.
"""

from __future__ import annotations

import asyncio

import grpc

RETRY_AFTER_MS = 200
MAX_HOLD_S = 10.0  # a handshake keeps its place at most this long


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.active = 0
        self.refused = 0    # handshakes turned away since start (Diagnostics, benches)

    def enter(self) -> bool:
        if self.active >= self.limit:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active = max(0, self.active - 1)

    def ticket(self, max_hold_s: float | None = MAX_HOLD_S) -> "Ticket":
        """The place of a handshake just admitted (``enter()`` was True); given back by ``done()``, or after
        ``max_hold_s`` whatever the handshake does: a client that stops reading mid-handshake (its snapshot
        unread) must not keep its place, and with it everyone else out."""
        t = Ticket(self)
        if max_hold_s is not None:
            t.timer = asyncio.get_running_loop().call_later(max_hold_s, t.done)
        return t

    async def refuse(self, context: grpc.aio.ServicerContext, what: str) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"busy: {self.limit} {what} handshakes in progress; retry in a moment",
                            trailing_metadata=(("retry-after-ms", str(RETRY_AFTER_MS)),))


class Ticket:
    """One admitted handshake: given back once, when it is over, its stream ends first, or it took too long."""

    __slots__ = ("admission", "held", "timer")

    def __init__(self, admission: Admission) -> None:
        self.admission, self.held = admission, True
        self.timer: asyncio.TimerHandle | None = None

    def done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.held:
            self.held = False
            self.admission.leave()


UNBOUNDED = Admission(1 << 30)

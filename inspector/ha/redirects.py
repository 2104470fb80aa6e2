"""Where a follower sends a client: to the leader — unless that leader is evidently gone.

When the leader dies, the followers keep naming it until its lease expires
(up to a TTL plus etcd's 0.5 s expiry sweep). A client sent there fails and
comes back; each failure grows its reconnect backoff (the agent's and
``DoctorClient``'s cap at 2 s), so without help it returns seconds after a
new leader was elected (``bench/failover.py`` measured agents back 2–3.6 s
after the new leader with TTL 2). A follower therefore *holds* a client —
its call left open, unanswered — while the leader it would name is evidently
gone: it does not answer a health check (``LeaderProbe``, cached briefly), or
this client already came back from it (an agent is known by its host, a
consumer by its subscription id); and while no leader is known, or this
replica is about to act. When the election moves on it sends the client
straight to the new leader, or serves it if this replica now leads. A hold
lasts at most the lease TTL + 1.5 s (how long a dead leader is normally
named); one still failing its health check then is held again, up to
``HOLD_TURNS`` holds (a loaded etcd extends leases: a follower redirected
clients to a leader dead for longer than that).

One task polls the election's view (two local attributes, every 10 ms)
while any client is held, and wakes the held ones on a change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from doctor_common.grpc_tls import secure_channel
from doctor_common.tls import ClientTls

POLL_S = 0.01
HOLD_TURNS = 3  # a client is held again while the leader named is still evidently gone, up to this many times


class LeaderProbe:
    """Does the named leader answer a health check? One probe at a time, its answer kept ``keep_s``."""

    def __init__(self, endpoint: Callable[[], str | None], timeout_s: float = 0.25, keep_s: float = 0.1,
                 tls: ClientTls | None = None) -> None:
        self.endpoint, self.timeout_s, self.keep_s = endpoint, timeout_s, keep_s
        self.tls = tls  # [tls]: the replicas serve TLS; this one dials with its own certificate (docs/tls.md)
        self._channel: tuple[str, grpc.aio.Channel] | None = None
        self._last: tuple[str, bool, float] | None = None
        self._lock = asyncio.Lock()

    async def alive(self) -> bool:
        async with self._lock:  # a reconnect storm shares one probe
            target = self.endpoint()
            if target is None:
                return False
            last = self._last
            if last is not None and last[0] == target and time.monotonic() - last[2] < self.keep_s:
                return last[1]
            if self._channel is None or self._channel[0] != target:
                await self.close()
                self._channel = (target, secure_channel(target, self.tls))
            try:
                r = await health_pb2_grpc.HealthStub(self._channel[1]).Check(
                    health_pb2.HealthCheckRequest(), timeout=self.timeout_s)
                ok = r.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                ok = False
                await self.close()  # a channel that failed would wait out its reconnect backoff next time
            self._last = (target, ok, time.monotonic())
            return ok

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel[1], None
            await channel.close()


class Redirector:
    def __init__(self, leader: Callable[[], str | None], acting: Callable[[], bool], own: str,
                 hold_s: float, alive: Callable[[], Awaitable[bool]]) -> None:
        self.leader = leader          # the endpoint the election names (ours while we lead)
        self.acting = acting          # this replica acts as leader (its state is loaded)
        self.own = own
        self.hold_s = hold_s
        self.alive = alive            # does the named leader answer?
        self._sent: dict[str, tuple[str, float]] = {}
        self._changed = asyncio.Event()
        self._held = 0
        self._watch: asyncio.Task[None] | None = None

    async def target(self, key: str) -> str | None:
        """Where to send client ``key`` now: None when this replica acts (serve it) or no leader is known."""
        for turn in range(HOLD_TURNS):  # bounded: a client is held at most HOLD_TURNS × hold_s
            if self.acting():
                break
            named = self.leader()
            sent = self._sent.get(key)
            # came back from the named leader: evidence it is gone, but only once (the leader may have sent it back)
            came_back = (turn == 0 and sent is not None and sent[0] == named
                         and time.monotonic() - sent[1] < self.hold_s)
            if not (named is None or named == self.own or came_back or not await self.alive()):
                break
            # held again while the named leader still does not answer: under a loaded etcd its lease outlives
            # the TTL + 1.5 s a dead leader is normally named for, and a client sent there only fails and backs off
            await self._hold(named)
        if self.acting():
            return None
        named = self.leader()
        if named is not None and named != self.own:
            self._remember(key, named)
            return named
        return None

    async def _hold(self, gone: str | None) -> None:
        """Until this replica acts or the election names a leader other than ``gone`` and us; at most hold_s."""
        deadline = time.monotonic() + self.hold_s
        self._held += 1
        if self._watch is None or self._watch.done():
            # the view it compares with is taken now, not when the task first runs: a change in between is a change
            self._watch = asyncio.create_task(self._poll((self.leader(), self.acting())), name="redirector")
        try:
            while True:  # bounded by the deadline
                changed = self._changed  # before the check: a change after it sets this very event
                if self.acting() or self.leader() not in (None, gone, self.own):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:  # asyncio.timeout, not wait_for (gh-86296: it can swallow a cancellation on 3.11)
                    async with asyncio.timeout(left):
                        await changed.wait()
                except TimeoutError:
                    return
        finally:
            self._held -= 1

    async def _poll(self, last: tuple[str | None, bool]) -> None:
        while self._held > 0:
            await asyncio.sleep(POLL_S)
            now = (self.leader(), self.acting())
            if now != last:
                last = now
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()

    def _remember(self, key: str, endpoint: str) -> None:
        now = time.monotonic()
        if len(self._sent) > 100_000:  # clients that never came back
            self._sent = {k: v for k, v in self._sent.items() if now - v[1] < self.hold_s}
        self._sent[key] = (endpoint, now)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

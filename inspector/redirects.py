"""Where a follower sends a client: to the leader — unless that leader is evidently gone.

When the leader dies, the followers keep naming it until its lease expires
(up to a TTL plus etcd's 0.5 s expiry sweep). A client sent there fails and
comes back; each failure grows its reconnect backoff (the agent's and
``DoctorClient``'s cap at 2 s), so without help it returns seconds after a
new leader was elected (``bench/failover.py`` measured agents back 2–3.6 s
after the new leader with TTL 2). A follower therefore remembers where it
sent each client (an agent by host, a consumer by subscription id) and
*holds* a client that comes back while the same leader is still named — or
while no leader is known, or this replica is about to act — its call left
open, unanswered, until the election moves on; then it sends the client
straight to the new leader, or serves it if this replica now leads.

One task polls the election's view (two local attributes, every 10 ms)
while any client is held, and wakes the held ones on a change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

POLL_S = 0.01


class Redirector:
    def __init__(self, leader: Callable[[], str | None], acting: Callable[[], bool], own: str,
                 hold_s: float) -> None:
        self.leader = leader          # the endpoint the election names (ours while we lead)
        self.acting = acting          # this replica acts as leader (its state is loaded)
        self.own = own
        self.hold_s = hold_s
        self._sent: dict[str, tuple[str, float]] = {}
        self._changed = asyncio.Event()
        self._held = 0
        self._watch: asyncio.Task[None] | None = None

    async def target(self, key: str) -> str | None:
        """Where to send client ``key`` now: None when this replica acts (serve it) or no leader is known."""
        named = self.leader()
        sent = self._sent.get(key)
        came_back = sent is not None and sent[0] == named and time.monotonic() - sent[1] < self.hold_s
        if not self.acting() and (named is None or named == self.own or came_back):
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
            self._watch = asyncio.create_task(self._poll(), name="redirector")
        try:
            while not self.acting() and self.leader() in (None, gone, self.own):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return
        finally:
            self._held -= 1

    async def _poll(self) -> None:
        last = (self.leader(), self.acting())
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

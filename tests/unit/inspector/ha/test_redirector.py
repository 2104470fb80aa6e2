"""Where a follower sends a client while the election settles (inspector/ha/redirects.py)."""

from __future__ import annotations

import asyncio
import time

from inspector.ha import redirects
from inspector.ha.redirects import Redirector


class Election:
    """The follower's view: the leader it names, whether that leader answers, whether this replica acts."""

    def __init__(self, leader: str | None, alive: bool) -> None:
        self.leader, self.is_alive, self.acting = leader, alive, False
        self.probes = 0

    async def alive(self) -> bool:
        self.probes += 1
        return self.is_alive

    def redirector(self, hold_s: float) -> Redirector:
        return Redirector(lambda: self.leader, lambda: self.acting, "me:1", hold_s, self.alive)


async def test_a_live_leader_is_named_at_once() -> None:
    e = Election("leader:1", alive=True)
    r = e.redirector(5.0)
    async with asyncio.timeout(1):
        assert await r.target("agent:h") == "leader:1"
    await r.close()


async def test_a_dead_leader_named_past_one_hold_is_not_named_while_it_stays_dead() -> None:
    """The lease outlives a hold (a loaded etcd): the client is held again, then sent to the next leader."""
    e = Election("dead:1", alive=False)
    r = e.redirector(0.1)
    task = asyncio.create_task(r.target("agent:h"))
    started = time.monotonic()
    while time.monotonic() - started < 0.15:  # past the first hold (its deadline, the behaviour under test)
        await asyncio.sleep(0.01)
    assert not task.done()  # held again: the named leader still fails its health check
    e.leader, e.is_alive = "next:1", True
    async with asyncio.timeout(1):
        assert await task == "next:1"
    assert e.probes >= 2
    await r.close()


async def test_a_hold_is_bounded() -> None:
    """A leader that never answers and is never replaced: after HOLD_TURNS holds the client is sent anyway
    (it fails there and comes back), never held for ever."""
    e = Election("dead:1", alive=False)
    r = e.redirector(0.05)
    started = time.monotonic()
    async with asyncio.timeout(2):
        assert await r.target("agent:h") == "dead:1"
    assert time.monotonic() - started >= redirects.HOLD_TURNS * 0.05 * 0.9
    await r.close()


async def test_a_client_that_came_back_is_held_once_then_sent_to_a_leader_that_answers() -> None:
    """Back from the leader it was sent to: held once (the leader may be gone); the leader answering its health
    check after that hold, the client is sent there again."""
    e = Election("leader:1", alive=True)
    r = e.redirector(0.05)
    async with asyncio.timeout(1):
        assert await r.target("sub:x") == "leader:1"
        started = time.monotonic()
        assert await r.target("sub:x") == "leader:1"  # came back: held one turn, then sent
    assert time.monotonic() - started >= 0.04
    await r.close()


async def test_this_replica_taking_over_serves_the_held_client() -> None:
    e = Election("dead:1", alive=False)
    r = e.redirector(5.0)
    task = asyncio.create_task(r.target("agent:h"))
    await asyncio.sleep(0)  # the client is held (its task has run up to the hold)
    e.acting, e.leader = True, "me:1"
    async with asyncio.timeout(1):
        assert await task is None  # served here
    await r.close()

"""Leadership through etcd (inspector/ha/election.py), in process, against a real etcd."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from doctor_common.etcd_guard import NotLeader
from inspector.ha.election import Election
from inspector.ha.etcd_config import EtcdClient, connect
from tests.etcd_cluster import EtcdCluster
from tests.integration.etcd.conftest import keys_under, make_config


async def first_leader(elections: list[Election], timeout: float = 5.0) -> Election:
    waits = {asyncio.create_task(e.wait_leader()): e for e in elections}
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in waits:
            t.cancel()
    assert done, f"nobody led within {timeout}s"
    return waits[done.pop()]


async def until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def candidates(etcd1: EtcdCluster, prefix: str) -> AsyncIterator[list[Election]]:
    """Three candidates, each with its own client (as three inspector processes would have)."""
    cfg = make_config(etcd1, prefix)
    async with AsyncExitStack() as stack:
        out = []
        for i in range(3):
            client = await stack.enter_async_context(connect(cfg))
            e = Election(client, cfg, node_id=f"n{i}", endpoint=f"10.0.0.{i}:50051")
            stack.push_async_callback(e.close)
            e.start()
            out.append(e)
        yield out


async def test_exactly_one_of_three_candidates_leads(candidates: list[Election], admin: EtcdClient,
                                                     prefix: str) -> None:
    """One leader; its token is the leader key's create revision; the followers know where it is; never two."""
    leader = await first_leader(candidates)
    followers = [e for e in candidates if e is not leader]
    await until(lambda: all(f.leader_endpoint() == leader.endpoint for f in followers), 3, "followers to learn")
    kv = await admin.get(f"{prefix}/leader".encode())
    assert kv is not None and leader.token == kv.create_revision and kv.lease == leader.term.lease_id  # type: ignore[union-attr]
    assert all(f.leader_info().token == leader.token for f in followers)  # type: ignore[union-attr]
    assert [f.is_leader for f in followers] == [False, False]
    with pytest.raises(NotLeader):
        followers[0].current_term()
    # over two lease periods (several renewals) leadership neither moves nor doubles
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert [e.is_leader for e in candidates].count(True) == 1 and leader.is_leader
        await asyncio.sleep(0.02)
    assert leader.term.granted_ttl == 1  # type: ignore[union-attr]  # fast etcd timing grants TTL 1


async def test_closing_the_leader_hands_over_at_once_and_leaves_no_keys(candidates: list[Election],
                                                                        admin: EtcdClient, prefix: str) -> None:
    """A leader that closes revokes its lease: another leads well before the TTL could run out; nothing is left behind."""
    leader = await first_leader(candidates)
    old_term = leader.term
    t0 = time.monotonic()
    await leader.close()
    assert old_term is not None and old_term.lost.is_set() and not leader.is_leader
    nxt = await first_leader([e for e in candidates if e is not leader])
    handover = time.monotonic() - t0
    assert handover < 0.5, "handover waited for lease expiry instead of the revoke"
    print(f"handover on close: {handover * 1000:.0f} ms")
    assert nxt.token > old_term.token  # type: ignore[operator]
    for e in candidates:
        await e.close()
    assert await keys_under(admin, prefix) == []


async def test_deleting_the_leader_key_ends_the_term(candidates: list[Election], admin: EtcdClient,
                                                     prefix: str) -> None:
    """If the leader key disappears under a live lease, the leader steps down at once and a new term has a new token."""
    leader = await first_leader(candidates)
    term = leader.current_term()
    await admin.delete(f"{prefix}/leader".encode())
    await asyncio.wait_for(term.lost.wait(), 1.0)
    assert term.definitive and "deleted" in (term.reason or "")
    nxt = await first_leader(candidates)
    assert nxt.token is not None and nxt.token > term.token


async def test_term_run_cancels_work_when_leadership_is_lost(candidates: list[Election], admin: EtcdClient,
                                                             prefix: str) -> None:
    """Work run under a term is cancelled when the term is lost and the caller gets NotLeader."""
    leader = await first_leader(candidates)
    term = leader.current_term()
    cancelled, working = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        working.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = asyncio.create_task(term.run(work()))
    await asyncio.wait_for(working.wait(), 1.0)
    await admin.delete(f"{prefix}/leader".encode())
    with pytest.raises(NotLeader):
        await asyncio.wait_for(runner, 1.0)
    assert cancelled.is_set()
    started = asyncio.Event()

    async def late() -> None:
        started.set()

    with pytest.raises(NotLeader):  # a lost term starts nothing new
        await term.run(late())
    assert not started.is_set()

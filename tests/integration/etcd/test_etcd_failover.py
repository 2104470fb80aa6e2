"""Leader processes that die or freeze: takeover time, fencing, and the notification log across leaders."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from inspector.ha.etcd_config import EtcdClient
from notifier.etcd_log import EtcdLog
from tests.etcd_cluster import EtcdCluster
from tests.integration.etcd.candidate import Candidate


async def start_candidates(cluster: EtcdCluster, prefix: str, n: int) -> list[Candidate]:
    return [await Candidate(cluster.endpoints, prefix, f"p{i}", ttl=1, append_every_ms=10).start() for i in range(n)]


@pytest.fixture
async def procs(etcd1: EtcdCluster, prefix: str) -> AsyncIterator[list[Candidate]]:
    out: list[Candidate] = []
    yield out
    for c in out:
        await c.stop()


async def leader_of(cands: list[Candidate], timeout: float, after: float = 0.0) -> tuple[Candidate, dict[str, Any]]:
    """The candidate that reports a fenced write after ``after`` (monotonic), and that event."""
    waits = {asyncio.create_task(c.wait_event(lambda e: e["event"] == "wrote" and e["t"] > after, timeout)): c
             for c in cands if c.running}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        return waits[task], task.result()
    finally:
        for t in waits:
            t.cancel()


async def appended(c: Candidate, at_least: int, timeout: float) -> None:
    await c.wait_event(lambda e: sum(x["event"] == "appended" for x in c.events) >= at_least, timeout)


async def check_log(admin: EtcdClient, prefix: str, cands: list[Candidate]) -> list[tuple[int, str]]:
    """Gap-free, no id twice, every acknowledged append present at its number; what was not acked was in flight."""
    entries = [(n.sequence, n.notification_id) for n in await EtcdLog(admin, prefix).read(0, 10**9)]
    assert [s for s, _ in entries] == list(range(1, len(entries) + 1)), "gap or disorder in the log"
    ids = [i for _, i in entries]
    assert len(set(ids)) == len(ids), "a notification was stored twice"
    acked = {e["id"]: e["seq"] for c in cands for e in c.events if e["event"] == "appended"}
    by_id = dict((i, s) for s, i in entries)
    lost = {i: s for i, s in acked.items() if by_id.get(i) != s}
    assert not lost, f"acknowledged appends lost or renumbered: {lost}"
    unacked = set(ids) - set(acked)
    attempted = {e["id"] for c in cands for e in c.events if e["event"] == "appending"}
    assert unacked <= attempted
    assert len(unacked) <= sum(1 for c in cands if not c.running), "more than one in-flight append per dead leader"
    return entries


async def test_sigkilled_leader_is_replaced_within_the_ttl_and_no_notification_is_lost(
        etcd1: EtcdCluster, prefix: str, admin: EtcdClient, procs: list[Candidate]) -> None:
    """SIGKILL the leader process twice while it appends: another process leads and completes a fenced write within
    TTL + 1.5 s each time; the log stays gap-free, nothing acknowledged is lost, no sequence is assigned twice."""
    procs += await start_candidates(etcd1, prefix, 3)
    leader, wrote = await leader_of(procs, timeout=15)
    takeovers = []
    for _ in range(2):
        await appended(leader, 5, timeout=5)
        token = leader.last("leader")["token"]  # type: ignore[index]
        killed_at = await leader.kill()
        leader, wrote = await leader_of(procs, timeout=5, after=killed_at)
        takeovers.append(wrote["t"] - killed_at)
        assert leader.last("leader")["token"] > token  # type: ignore[index]
    await appended(leader, 5, timeout=5)
    await leader.kill()
    entries = await check_log(admin, prefix, procs)
    print(f"takeovers {[round(t, 3) for t in takeovers]} s; {len(entries)} notifications in the log")
    assert max(takeovers) < 1 + 1.5, f"takeover took {max(takeovers):.2f}s with TTL 1"


async def test_frozen_leader_is_fenced_when_it_wakes(etcd1: EtcdCluster, prefix: str, admin: EtcdClient,
                                                     procs: list[Candidate]) -> None:
    """SIGSTOP the leader: another process takes over; on SIGCONT the old one steps down and none of its writes
    lands after the new leader's (its stale token is refused); the log stays consistent."""
    procs += await start_candidates(etcd1, prefix, 2)
    old, _ = await leader_of(procs, timeout=15)
    await appended(old, 5, timeout=5)
    old.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    new, _ = await leader_of([c for c in procs if c is not old], timeout=5, after=stopped_at)
    await appended(new, 5, timeout=5)
    old.signal(signal.SIGCONT)
    lost = await old.wait_event(lambda e: e["event"] == "lost", timeout=5)
    assert lost["reason"]
    await appended(new, 10, timeout=5)
    for c in procs:
        await c.kill()
    entries = await check_log(admin, prefix, procs)
    old_seqs = [s for s, i in entries if i.startswith(old.node_id + "-")]
    new_seqs = [s for s, i in entries if i.startswith(new.node_id + "-")]
    assert old_seqs and new_seqs and max(old_seqs) < min(new_seqs), "the frozen leader wrote after its successor"
    rejected = [e for e in old.events if e["event"] == "rejected"]
    print(f"old leader: stepped down because {lost['reason']!r}; fenced writes refused after waking: {len(rejected)}")

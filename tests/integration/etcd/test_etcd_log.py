"""The sequenced notification log in etcd (notifier/etcd_log.py) against a real etcd."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from doctor_common.api import fault_pb2
from doctor_common.etcd_guard import EtcdUnavailable, NotLeader, TokenGuard
from inspector.ha.election import Election
from inspector.ha.etcd_config import EtcdClient, connect
from notifier.etcd_log import EtcdLog
from notifier.log import CursorExpired
from tests.etcd_cluster import EtcdCluster
from tests.integration.etcd.conftest import keys_under, make_config


def note(i: Any) -> fault_pb2.FaultNotification:
    return fault_pb2.FaultNotification(notification_id=str(i))


async def lead(client: EtcdClient, cluster: EtcdCluster, prefix: str, node: str = "a") -> Election:
    e = Election(client, make_config(cluster, prefix), node_id=node, endpoint=f"{node}:1")
    e.start()
    await e.wait_leader(timeout=5)
    return e


async def test_append_assigns_consecutive_sequences_and_reads_in_order(etcd1: EtcdCluster, prefix: str,
                                                                       admin: EtcdClient) -> None:
    """append numbers 1, 2, 3, ... without gaps; read(after, up_to) returns exactly after < seq <= up_to, in order."""
    e = await lead(admin, etcd1, prefix)
    log = EtcdLog(admin, prefix, guard=e, page=3)  # small pages: reads cross page boundaries
    try:
        seqs = [await log.append(note(i)) for i in range(10)]
        assert seqs == list(range(1, 11))
        assert log.last_sequence == 10
        got = await log.read(0, 10)
        assert [n.sequence for n in got] == list(range(1, 11))
        assert [n.notification_id for n in got] == [str(i) for i in range(10)]
        assert [n.sequence for n in await log.read(3, 7)] == [4, 5, 6, 7]
        assert [n.sequence for n in await log.read(8, 50)] == [9, 10]
        assert await log.read(10, 20) == []
        assert await log.read(5, 5) == []
        reader = EtcdLog(admin, prefix)  # a replica without a guard sees the same log
        assert await reader.load() == 10
        assert [n.sequence for n in await reader.read(6, 10)] == [7, 8, 9, 10]
        with pytest.raises(NotLeader):
            await reader.append(note("x"))
    finally:
        await e.close()


async def test_retention_trims_and_old_cursors_expire(etcd1: EtcdCluster, prefix: str, admin: EtcdClient) -> None:
    """Only the last `retention` entries stay in etcd; a cursor older than them raises CursorExpired naming the oldest."""
    e = await lead(admin, etcd1, prefix)
    log = EtcdLog(admin, prefix, guard=e, retention=5)
    try:
        for i in range(12):
            await log.append(note(i))
        assert await keys_under(admin, prefix) == ["leader", "log/e/" + "8".zfill(20), "log/e/" + "9".zfill(20),
                                                   *("log/e/" + str(s).zfill(20) for s in (10, 11, 12)), "log/last"]
        with pytest.raises(CursorExpired) as info:
            await log.read(6, 12)
        assert (info.value.cursor, info.value.first) == (6, 8)
        assert [n.sequence for n in await log.read(7, 12)] == [8, 9, 10, 11, 12]
        # a smaller retention configured later trims the surplus on the next append
        small = EtcdLog(admin, prefix, guard=e, retention=2)
        assert await small.append(note(12)) == 13
        assert [k for k in await keys_under(admin, prefix) if k.startswith("log/e/")] == \
            ["log/e/" + str(s).zfill(20) for s in (12, 13)]
    finally:
        await e.close()


async def test_new_leader_continues_the_sequence(etcd1: EtcdCluster, prefix: str, admin: EtcdClient) -> None:
    """After a leader change the new leader's first append gets last+1 (even without load()); no number twice."""
    cfg = make_config(etcd1, prefix)
    async with connect(cfg) as ca, connect(cfg) as cb:
        a = await lead(ca, etcd1, prefix, "a")
        b = Election(cb, cfg, node_id="b", endpoint="b:1")
        b.start()
        log_a = EtcdLog(ca, prefix, guard=a)
        for i in range(5):
            await log_a.append(note(f"a{i}"))
        token_a = a.token
        await a.close()  # revokes its lease: b takes over at once
        await b.wait_leader(timeout=5)
        log_b = EtcdLog(cb, prefix, guard=b)
        assert log_b.last_sequence == 0  # stale cache on purpose
        assert await log_b.append(note("b0")) == 6
        assert await log_b.append(note("b1")) == 7
        # the old leader's log object (and its stale token) can no longer write
        with pytest.raises(NotLeader):
            await log_a.append(note("late"))
        with pytest.raises(NotLeader):
            await EtcdLog(ca, prefix, guard=TokenGuard(ca, b.leader_key, token_a)).append(note("late"))
        got = await log_b.read(0, 100)
        assert [n.sequence for n in got] == list(range(1, 8))
        assert [n.notification_id for n in got] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]
        await b.close()


class LostReply:
    """A guard whose first transaction is applied but answered with EtcdUnavailable (a reply lost in failover)."""

    def __init__(self, inner: Election) -> None:
        self.inner = inner
        self.lost = 0

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
        result = await self.inner.txn(compare, success, failure)
        if self.lost == 0:
            self.lost += 1
            raise EtcdUnavailable("reply lost (injected)")
        return result


async def test_append_whose_reply_was_lost_is_stored_once(etcd1: EtcdCluster, prefix: str,
                                                          admin: EtcdClient) -> None:
    """An append applied by etcd whose answer was lost is retried, recognised as ours, and stored exactly once."""
    e = await lead(admin, etcd1, prefix)
    try:
        plain = EtcdLog(admin, prefix, guard=e)
        assert await plain.append(note("before")) == 1
        flaky = EtcdLog(admin, prefix, guard=LostReply(e))
        await flaky.load()
        assert await flaky.append(note("once")) == 2
        assert await flaky.append(note("after")) == 3
        got = await plain.read(0, 10)
        assert [(n.sequence, n.notification_id) for n in got] == [(1, "before"), (2, "once"), (3, "after")]
    finally:
        await e.close()


async def test_stale_token_cannot_append(etcd1: EtcdCluster, prefix: str, admin: EtcdClient) -> None:
    """A writer holding an old fencing token is refused by etcd and the counter does not move."""
    e = await lead(admin, etcd1, prefix)
    try:
        log = EtcdLog(admin, prefix, guard=e)
        await log.append(note(0))
        stale = EtcdLog(admin, prefix, guard=TokenGuard(admin, e.leader_key, e.token - 1))  # type: ignore[operator]
        n = note("stale")
        with pytest.raises(NotLeader):
            await stale.append(n)
        assert n.sequence == 0
        assert await EtcdLog(admin, prefix).load() == 1
    finally:
        await e.close()

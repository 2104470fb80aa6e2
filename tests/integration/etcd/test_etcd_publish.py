"""Publishing through the etcd log: a subscriber that registers between the append and the fan-out; an append
whose answer is lost (applied, yet it raised) or whose caller left, offered live once and in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from doctor_common.api import fault_pb2
from doctor_common.auth import Principal
from doctor_common.etcd_guard import EtcdUnavailable, TokenGuard
from inspector.ha.etcd_config import EtcdClient
from notifier.etcd_log import EtcdLog
from notifier.filters import Filter
from notifier.registry import Registry
from notifier.server import Publisher
from tests.etcd_cluster import EtcdCluster

ADMIN = Principal("admin", admin=True)


async def leader_guard(admin: EtcdClient, prefix: str) -> TokenGuard:
    t = admin.transactions
    ok, resp = await admin.transaction(compare=[t.create(f"{prefix}/leader".encode()) == 0],
                                       success=[t.put(f"{prefix}/leader".encode(), b"{}")], failure=[])
    assert ok
    return TokenGuard(admin, f"{prefix}/leader".encode(), resp[0].response_put.header.revision)


class LossyGuard(TokenGuard):
    """The leader's real guard; told to, its transactions reach etcd but their answers are lost (the log retries
    until its write deadline, then raises), or they are held until released (a write in flight when its caller
    left)."""

    lose_answers = False
    hold: asyncio.Event | None = None

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
        out = await super().txn(compare, success, failure)
        if self.hold is not None:
            await self.hold.wait()
        if self.lose_answers:
            raise EtcdUnavailable("etcd did not answer in time")
        return out


def received(sub: Any) -> list[int]:
    out = []
    while (item := sub.take_nowait()) is not None:
        out.append(item.sequence)
    return out


async def test_a_subscriber_registered_after_the_append_is_not_offered_the_entry_again(
        etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """The etcd append runs shielded, so the log's counter moves before the publisher fans out: a Subscribe
    served in between starts after that entry and replays it from the log. The fan-out must not offer it to
    that subscriber as well (it would arrive twice); earlier subscribers get it live, once."""
    t = admin.transactions
    ok, resp = await admin.transaction(compare=[t.create(f"{prefix}/leader".encode()) == 0],
                                       success=[t.put(f"{prefix}/leader".encode(), b"{}")], failure=[])
    assert ok
    token = resp[0].response_put.header.revision
    guard = TokenGuard(admin, f"{prefix}/leader".encode(), token)
    elog = EtcdLog(admin, prefix, guard=guard)
    registry = Registry()
    early = registry.add(ADMIN, Filter(), 0)
    late: list[Any] = []

    class RegisteringLog:
        """The real log, plus a subscriber registering the moment the entry is stored (a concurrent Subscribe)."""

        @property
        def last_sequence(self) -> int:
            return elog.last_sequence

        async def append(self, n: fault_pb2.FaultNotification, *, also: Any = ()) -> int:
            seq = await elog.append(n, also=also)
            late.append(registry.add(ADMIN, Filter(), elog.last_sequence))
            return seq

        async def read(self, after: int, up_to: int) -> list[fault_pb2.FaultNotification]:
            return await elog.read(after, up_to)

    publisher = Publisher(RegisteringLog(), registry)  # type: ignore[arg-type]
    seq = await publisher.publish(fault_pb2.FaultNotification(notification_id="n1"))
    assert seq == 1 and late[0].start_sequence == 1
    assert late[0].take_nowait() is None, "the late subscriber gets entry 1 from its replay, not live as well"
    first = early.take_nowait()
    assert first is not None and first.sequence == 1 and early.take_nowait() is None
    assert [n.notification_id for n in await elog.read(0, 1)] == ["n1"]


async def test_an_append_applied_but_reported_failed_is_offered_once_and_before_the_next(
        etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """etcd applies an append whose answer is lost: the publish raises, yet the entry is in the log (and the
    journal step with it). ``catch_up`` offers it to live subscribers, once; the next publish goes after it.
    Without the read-back the subscriber would see 2 without 1, or a retry would put the notice in twice."""
    base = await leader_guard(admin, prefix)
    guard = LossyGuard(admin, base.leader_key, base.token)
    elog = EtcdLog(admin, prefix, guard=guard, write_deadline_s=0.3)
    registry = Registry()
    sub = registry.add(ADMIN, Filter(), 0)
    publisher = Publisher(elog, registry)
    guard.lose_answers = True
    with pytest.raises(EtcdUnavailable):
        await publisher.publish(fault_pb2.FaultNotification(notification_id="n1"))
    guard.lose_answers = False
    assert received(sub) == [], "nothing is offered while its outcome is unknown"
    assert [n.notification_id for n in await elog.read(0, 1)] == ["n1"], "etcd applied it"
    await publisher.catch_up()
    assert received(sub) == [1]
    await publisher.catch_up()  # nothing more to read back
    assert received(sub) == []
    guard.lose_answers = True
    with pytest.raises(EtcdUnavailable):
        await publisher.publish(fault_pb2.FaultNotification(notification_id="n2"))
    guard.lose_answers = False
    assert await publisher.publish(fault_pb2.FaultNotification(notification_id="n3")) == 3
    assert received(sub) == [2, 3], "the next publish offers what the failed one wrote first"
    assert [n.notification_id for n in await elog.read(0, 3)] == ["n1", "n2", "n3"]


async def test_an_append_whose_caller_left_is_offered_when_it_lands(
        etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """The caller of a publish is cancelled (its term's task ends) while the append is in flight: the write goes
    on, shielded. The next publish waits for its outcome and offers it first, in order."""
    base = await leader_guard(admin, prefix)
    guard = LossyGuard(admin, base.leader_key, base.token)
    guard.hold = asyncio.Event()
    elog = EtcdLog(admin, prefix, guard=guard)
    registry = Registry()
    sub = registry.add(ADMIN, Filter(), 0)
    publisher = Publisher(elog, registry)
    caller = asyncio.create_task(publisher.publish(fault_pb2.FaultNotification(notification_id="n1")))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        while await admin.get(elog.last_key) is None:
            await asyncio.sleep(0.01)  # until etcd holds entry 1 (its answer is held back)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert received(sub) == []
    nxt = asyncio.create_task(publisher.publish(fault_pb2.FaultNotification(notification_id="n2")))
    await asyncio.sleep(0.05)
    assert not nxt.done(), "the next publish waits for the write in flight"
    guard.hold.set()
    guard.hold = None
    async with asyncio.timeout(10):
        assert await nxt == 2
    assert received(sub) == [1, 2]

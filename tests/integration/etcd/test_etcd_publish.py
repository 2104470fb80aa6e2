"""Publishing through the etcd log: a subscriber that registers between the append and the fan-out."""

from __future__ import annotations

from typing import Any

from doctor_common.api import fault_pb2
from doctor_common.auth import Principal
from doctor_common.etcd_guard import TokenGuard
from inspector.ha.etcd_config import EtcdClient
from notifier.etcd_log import EtcdLog
from notifier.filters import Filter
from notifier.registry import Registry
from notifier.server import Publisher
from tests.etcd_cluster import EtcdCluster

ADMIN = Principal("admin", admin=True)


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

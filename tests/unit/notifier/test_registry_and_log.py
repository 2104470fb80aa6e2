"""Fan-out never waits on a slow consumer; the log serves resumes in order."""

import pytest

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter
from notifier.log import CursorExpired, MemoryLog
from notifier.registry import FELL_BEHIND, Registry
from notifier.wire import Delivery

A = Principal("a", project="project-a")


def _n(i: int) -> fault_pb2.FaultNotification:
    f = common_pb2.Fault(fault_id=f"f{i}", fault_type="compute.host.nic.down", severity=common_pb2.SEVERITY_CRITICAL)
    return fault_pb2.FaultNotification(notification_id=f"n{i}", sequence=i, virtual_resource_info=[
        common_pb2.VirtualResourceInfo(virtual_resource_id="vm", project_id="project-a", faults=[f])])


def test_slow_subscriber_is_cut_off_and_others_keep_receiving() -> None:
    """A full queue ends only that subscriber (its queue dropped: it resumes from the log); a reading one gets
    every notification."""
    reg = Registry(queue_limit=3)
    slow, fast = reg.add(A, Filter(), 0), reg.add(A, Filter(), 0)
    for i in range(1, 6):
        reg.fan_out(_n(i))
        item = fast.take_nowait()  # the fast one keeps up
        assert item is not None and item.sequence == i
    assert slow.overflowed and slow.ended_by == FELL_BEHIND and not fast.overflowed
    assert slow.take_nowait() is None and slow.depth == 0


def test_fan_out_skips_subscribers_who_may_not_see_it() -> None:
    """A notification about project-a's server reaches no project-b subscriber."""
    reg = Registry()
    b = reg.add(Principal("b", project="project-b"), Filter(), 0)
    assert reg.fan_out(_n(1)) == 0 and b.take_nowait() is None


def test_one_view_and_one_serialization_per_project_and_filter() -> None:
    """Every subscriber of a project with the same filter is handed the very same bytes (serialized once),
    whatever its name; another filter gets its own; the administrators theirs."""
    reg = Registry()
    subs = [reg.add(Principal(f"a{i}", project="project-a"), Filter(), 0) for i in range(3)]
    narrow = reg.add(Principal("a-narrow", project="project-a"), Filter(fault_types=("compute.host.*",)), 0)
    admin = reg.add(Principal("admin", admin=True), Filter(), 0)
    assert reg.fan_out(_n(1)) == 5
    got = [s.take_nowait() for s in subs]
    assert all(isinstance(d, Delivery) for d in got) and len({id(d.data) for d in got}) == 1  # type: ignore[union-attr]
    other = narrow.take_nowait()
    assert other is not None and other.data is not got[0].data  # type: ignore[union-attr]
    msg = fault_pb2.SubscribeStreamMessage.FromString(got[0].data)  # type: ignore[union-attr]
    assert msg.fault.sequence == 1 and msg.fault.virtual_resource_info[0].virtual_resource_id == "vm"
    assert admin.take_nowait() is not None


def test_idle_projects_are_not_visited_and_leave_no_trace() -> None:
    """Subscribers of projects a notification does not name are never looked at; a project whose subscribers
    all left is forgotten by the index."""
    reg = Registry()
    idle = [reg.add(Principal(f"p{i}", project=f"idle-{i}"), Filter(), 0) for i in range(100)]
    owner = reg.add(A, Filter(), 0)
    kept = [s.principal for s in idle]
    for s in idle:
        s.principal = None  # type: ignore[assignment]  # visiting one would now fail
    assert reg.fan_out(_n(1)) == 1 and owner.take_nowait() is not None
    for s, p in zip(idle, kept):
        s.principal = p
    reg2 = Registry()
    subs = [reg2.add(Principal(f"q{i}", project="gone"), Filter(), 0) for i in range(3)]
    for s in subs:
        reg2.remove(s)
    assert "gone" not in reg2._by_project and len(reg2) == 0


async def test_memory_log_sequences_reads_and_retention() -> None:
    """Sequences are consecutive; read(after, up_to) is ordered and bounded; old cursors expire."""
    log = MemoryLog(retention=3)
    for i in range(5):
        assert await log.append(_n(0)) == i + 1
    assert [n.sequence for n in await log.read(2, 5)] == [3, 4, 5]
    assert [n.sequence for n in await log.read(3, 4)] == [4]
    assert await log.read(5, 5) == []
    with pytest.raises(CursorExpired, match="QueryFaults"):
        await log.read(1, 5)

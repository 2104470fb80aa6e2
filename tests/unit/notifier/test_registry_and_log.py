"""Fan-out never waits on a slow consumer; the log serves resumes in order."""

import pytest

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter
from notifier.log import CursorExpired, MemoryLog
from notifier.registry import OVERFLOW, Registry

A = Principal("a", project="project-a")


def _n(i: int) -> fault_pb2.FaultNotification:
    f = common_pb2.Fault(fault_id=f"f{i}", fault_type="compute.host.nic.down", severity=common_pb2.SEVERITY_CRITICAL)
    return fault_pb2.FaultNotification(notification_id=f"n{i}", sequence=i, virtual_resource_info=[
        common_pb2.VirtualResourceInfo(virtual_resource_id="vm", project_id="project-a", faults=[f])])


def test_slow_subscriber_is_cut_off_and_others_keep_receiving() -> None:
    """A full queue marks only that subscriber overflowed; a reading one gets every notification."""
    reg = Registry(queue_limit=3)
    slow, fast = reg.add(A, Filter(), 0), reg.add(A, Filter(), 0)
    for i in range(1, 6):
        reg.fan_out(_n(i))
        fast.queue.get_nowait()  # the fast one keeps up
    assert slow.overflowed and not fast.overflowed
    items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
    assert [x.sequence for x in items[:3]] == [1, 2, 3] and items[3] is OVERFLOW  # type: ignore[union-attr]


def test_fan_out_skips_subscribers_who_may_not_see_it() -> None:
    """A notification about project-a's server reaches no project-b subscriber."""
    reg = Registry()
    b = reg.add(Principal("b", project="project-b"), Filter(), 0)
    assert reg.fan_out(_n(1)) == 0 and b.queue.empty()


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

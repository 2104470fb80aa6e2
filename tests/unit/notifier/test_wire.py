"""A batch is built from deliveries' bytes alone, yet is exactly what protobuf would serialize; its size is
bounded in count and bytes."""

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter
from notifier.registry import Registry
from notifier.wire import ITEM_OVERHEAD, MAX_BATCH, MAX_BATCH_BYTES, Delivery, batch, batch_length, delivery


def _n(i: int, details: str = "") -> fault_pb2.FaultNotification:
    f = common_pb2.Fault(fault_id=f"f{i}", fault_type="compute.host.nic.down", probable_cause=details)
    return fault_pb2.FaultNotification(notification_id=f"n{i}", sequence=i, physical_resource_info=[
        common_pb2.PhysicalResourceInfo(physical_resource_id="compute-1", faults=[f])])


def test_batch_bytes_are_what_protobuf_serializes() -> None:
    """Small and large (multi-byte length prefixes) messages, fault and maintenance alike."""
    views = [_n(1), _n(2, "x" * 300), _n(3, "y" * 70_000)]
    maint = _n(4)
    maint.maintenance.session_id = "s-1"
    views.append(maint)
    items = [delivery(v) for v in views]
    expected = fault_pb2.SubscribeStreamMessage(batch=fault_pb2.NotificationBatch(
        messages=[fault_pb2.SubscribeStreamMessage.FromString(d.data) for d in items])).SerializeToString()
    assert batch(items) == expected
    parsed = fault_pb2.SubscribeStreamMessage.FromString(batch(items))
    assert [m.WhichOneof("kind") for m in parsed.batch.messages] == ["fault"] * 3 + ["maintenance"]
    assert parsed.batch.messages[2].fault.physical_resource_info[0].faults[0].probable_cause == "y" * 70_000


def test_batch_length_counts_and_bytes() -> None:
    small = [Delivery(i, b"s" * 100) for i in range(10)]
    assert batch_length(small, 0, 4) == 4
    assert batch_length(small, 8, 4) == 2        # what is left
    assert batch_length(small, 0, 1) == 1
    big = [Delivery(i, b"b" * (MAX_BATCH_BYTES // 3)) for i in range(5)]
    assert batch_length(big, 0, 100) == 2        # a third fits no more once the prefixes are counted
    huge = [Delivery(1, b"h" * (MAX_BATCH_BYTES + 1)), *small]
    assert batch_length(huge, 0, 100) == 1       # larger than a batch: it goes alone


def test_a_subscriber_takes_what_is_queued_within_count_and_budget() -> None:
    reg = Registry()
    sub = reg.add(Principal("admin", admin=True), Filter(), 0, max_batch=10**9)
    assert sub.max_batch == MAX_BATCH            # bounded, not refused
    assert reg.add(Principal("admin", admin=True), Filter(), 0, max_batch=0).max_batch == 1
    for i in range(1, 8):
        reg.fan_out(_n(i))
    first = sub.take_nowait()
    assert first is not None and first.sequence == 1
    more = sub.take_queued(3, MAX_BATCH_BYTES)
    assert [d.sequence for d in more] == [2, 3, 4]
    size = len(more[0].data) + ITEM_OVERHEAD
    assert [d.sequence for d in sub.take_queued(10, 2 * size)] == [5, 6]   # the budget stops it
    assert [d.sequence for d in sub.take_queued(10, MAX_BATCH_BYTES)] == [7]
    assert sub.take_queued(10, MAX_BATCH_BYTES) == [] and sub.depth == 0

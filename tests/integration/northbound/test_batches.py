"""Notifications waiting for a consumer that accepts batches (SubscribeRequest.max_batch) travel together, in
order, in one stream message; a consumer that did not ask gets one per message; DoctorClient unpacks them."""

from __future__ import annotations

import grpc

from doctor_common.api import common_pb2, fault_pb2, fault_pb2_grpc
from doctor_common.client import DoctorClient
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab

BURST = 30


def _warning(i: int) -> fault_pb2.FaultNotification:
    fault = common_pb2.Fault(fault_id=f"burst-{i}", fault_type="compute.host.sensor.warning",
                             severity=common_pb2.SEVERITY_WARNING, state=common_pb2.ALARM_STATE_FIRED)
    return fault_pb2.FaultNotification(notification_id=f"burst-{i}", physical_resource_info=[
        common_pb2.PhysicalResourceInfo(physical_resource_id="compute-1", faults=[fault])])


async def _logged_burst(lab: Lab, count: int) -> list[fault_pb2.FaultNotification]:
    """``count`` notices logged, then offered to the subscribers all at once (a burst: they queue together)."""
    burst = [_warning(i) for i in range(count)]
    for n in burst:
        await lab.inspector.log.append(n)
    for n in burst:
        lab.inspector.registry.fan_out(n)
    return burst


async def _messages(call: grpc.aio.UnaryStreamCall, notices: int) -> list[list[int]]:
    """The sequences each stream message carried, until ``notices`` notifications arrived."""
    got: list[list[int]] = []
    while sum(map(len, got)) < notices:
        msg = await call.read()
        assert msg is not grpc.aio.EOF, f"the stream ended after {got}"
        kind = msg.WhichOneof("kind")
        if kind == "subscribed":
            continue
        if kind == "batch":
            assert len(msg.batch.messages) > 1, "a batch of one should have been a plain message"
            got.append([m.fault.sequence for m in msg.batch.messages])
        else:
            got.append([msg.fault.sequence])
    return got


async def _subscribed(lab: Lab, stub: fault_pb2_grpc.FaultManagementStub, max_batch: int,
                      resume_after: int = 0) -> grpc.aio.UnaryStreamCall:
    call = stub.Subscribe(fault_pb2.SubscribeRequest(max_batch=max_batch, resume_after=resume_after),
                          metadata=auth_metadata(lab.tokens["admin"]))
    first = await call.read()
    assert first.WhichOneof("kind") == "subscribed"
    return call


async def test_a_burst_goes_in_batches_of_at_most_max_batch(lab: Lab) -> None:
    """Thirty notices queued at once: one message for a consumer accepting 50, three for one accepting 10, thirty
    for one that did not ask; every consumer gets every notice once, in sequence order."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        stub = fault_pb2_grpc.FaultManagementStub(ch)
        wide, narrow, plain = [await _subscribed(lab, stub, m) for m in (50, 10, 0)]
        burst = await _logged_burst(lab, BURST)
        sequences = [n.sequence for n in burst]
        wide_got, narrow_got, plain_got = [await _messages(c, BURST) for c in (wide, narrow, plain)]
        for c in (wide, narrow, plain):
            c.cancel()
    assert wide_got == [sequences]
    assert narrow_got == [sequences[i:i + 10] for i in range(0, BURST, 10)]
    assert plain_got == [[s] for s in sequences]


async def test_a_replay_goes_in_batches_and_the_client_unpacks_them(lab: Lab) -> None:
    """Resuming after the first of twelve logged notices replays the other eleven in messages of at most 5; the
    client yields them one by one, each a plain fault stamped delivered."""
    burst = await _logged_burst(lab, 12)
    first = burst[0].sequence
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = await _subscribed(lab, fault_pb2_grpc.FaultManagementStub(ch), 5, resume_after=first)
        got = await _messages(call, 11)
        call.cancel()
    assert got == [[first + i for i in range(j, min(j + 5, 12))] for j in range(1, 12, 5)]
    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as client:
        seen: list[fault_pb2.SubscribeStreamMessage] = []
        async for msg in client.subscribe_once(resume_after=first, max_batch=5):
            if msg.WhichOneof("kind") != "subscribed":
                seen.append(msg)
                if len(seen) == 11:
                    break
    assert [m.WhichOneof("kind") for m in seen] == ["fault"] * 11
    assert [m.fault.sequence for m in seen] == [first + i for i in range(1, 12)]
    assert all(any(s.stage == common_pb2.STAGE_DELIVERED for s in m.fault.timeline.stamps) for m in seen)


async def test_an_absurd_max_batch_is_bounded_not_refused(lab: Lab) -> None:
    """max_batch = 2^32 - 1 is served (capped by the inspector), and a burst still arrives whole and in order."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = await _subscribed(lab, fault_pb2_grpc.FaultManagementStub(ch), 2**32 - 1)
        burst = await _logged_burst(lab, BURST)
        got = await _messages(call, BURST)
        call.cancel()
    assert [s for m in got for s in m] == [n.sequence for n in burst]

"""Subscribers that leave hand their memory back: the inspector trims its heap once enough of them ended, not while
they are connected (doctor_common/heap_trim.py; the figures are bench/scale.py's ``kb_kept_by_inspector``)."""

from __future__ import annotations

import grpc

from doctor_common.api import fault_pb2, fault_pb2_grpc
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for

SUBSCRIBERS = 4


async def test_the_heap_is_trimmed_after_subscribers_leave(lab: Lab) -> None:
    trim = lab.inspector.heap_trim
    trim.after, trim.delay_s, trim.min_interval_s = SUBSCRIBERS, 0.05, 0.0  # a few streams stand for thousands
    before = trim.trims
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        stub = fault_pb2_grpc.FaultManagementStub(ch)
        calls = [stub.Subscribe(fault_pb2.SubscribeRequest(), metadata=auth_metadata(lab.tokens["admin"]))
                 for _ in range(SUBSCRIBERS)]
        for call in calls:
            assert (await call.read()).WhichOneof("kind") == "subscribed"
        await wait_for(lambda: len(lab.inspector.registry) == SUBSCRIBERS, 10, 0.01, "every subscriber registered")
        assert trim.trims == before and trim._due is None  # connected: nothing to give back
        for call in calls:
            call.cancel()
    await wait_for(lambda: len(lab.inspector.registry) == 0, 10, 0.01, "every subscriber gone")
    await wait_for(lambda: trim.trims > before, 10, 0.01, "the heap trimmed after they left")

"""A standalone inspector restarted loses nothing (issue 12, item 3): the sequence continues, consumers resume
where they were, a fault handled across the restart reaches its owners, each notification once."""

from __future__ import annotations

import asyncio

import grpc

from doctor_common.api import fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, wait_for
from inspector.config import load_inspector_config
from inspector.core import Inspector

MARKED_DOWN = fault_pb2.INCIDENT_PHASE_MARKED_DOWN


async def test_a_restart_continues_the_sequence_and_every_consumer_resumes(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1 fails and is handled (notices 1-3); the inspector stops; compute-2's link fails while it is
    down (its agent holds the event); a new inspector starts from the same files: the sequence goes on at 4,
    the consumer's subscription is recognised, and it receives 1..6, each once, in order. compute-1's incident,
    kept in the same file, is not announced again."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    client = DoctorClient(lab.endpoint, lab.tokens["admin"])
    received: list[fault_pb2.FaultNotification] = []
    snapshots: list[str] = []

    async def consume() -> None:
        async for msg in client.subscribe(max_backoff_s=0.2):
            if msg.WhichOneof("kind") == "subscribed":
                snapshots.append(msg.subscribed.subscription_id)
            else:
                received.append(msg.fault)
    task = asyncio.create_task(consume())
    try:
        await wait_for(lambda: snapshots, 10, what="subscribed")
        lab.cut_link("compute-1")
        await wait_for(lambda: [n.sequence for n in received] == [1, 2, 3], 10, what="compute-1's notices")

        await lab.inspector.stop(0.2)
        lab.cut_link("compute-2")  # nobody listens: its agent keeps the event until an inspector takes it
        lab.inspector = Inspector(load_inspector_config(lab.dir / "inspector.toml"))
        await lab.inspector.start()

        def compute2_done() -> bool:
            return any(n.phase == MARKED_DOWN and n.physical_resource_info[0].physical_resource_id == "compute-2"
                       for n in received)
        await wait_for(compute2_done, 20, what="compute-2's notices after the restart")
        await asyncio.sleep(0.3)  # anything still on its way
        assert [n.sequence for n in received] == [1, 2, 3, 4, 5, 6]
        assert {n.physical_resource_info[0].physical_resource_id for n in received[3:]} == {"compute-2"}
        assert lab.inspector.log.last_sequence == 6 and lab.power("compute-1") == ("off", 1)
        assert len(lab.inspector.alarms.incidents()) == 2, "compute-1's incident carried over"
        assert len(snapshots) == 2 and snapshots[0] == snapshots[1], "the same subscription, resumed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_client_whose_cursor_cannot_be_resumed_resynchronises(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A cursor the inspector cannot serve (here beyond its log: another inspector's) is not the end: the
    client starts a new subscription, says so, and gets the snapshot of everything it may see now."""
    lab: Lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",))
    said: list[str] = []
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as client:
        async with asyncio.timeout(10):
            async for msg in client.subscribe(resume_after=999, on_resync=said.append):
                assert msg.WhichOneof("kind") == "subscribed"
                assert [v.virtual_resource_id for v in msg.subscribed.virtual_resource_info] == ["vm-1-1",
                                                                                                 "port-vm-1-1"]
                break
    assert len(said) == 1 and "999" in said[0]
    _ = grpc  # the refusal was OUT_OF_RANGE (DoctorClient's log says so); nothing propagated

"""A dead VM is its owner's fault only (issue 12, item 7): the server whose qemu died is named and set to error."""

from __future__ import annotations

import asyncio

import grpc

from controller_adapter.base import ServerState
from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2, fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for


async def test_only_the_owner_of_the_dead_vm_is_told_and_only_its_server_set_to_error(lab: Lab) -> None:
    """compute-1's agent reports the libvirt domain whose uuid is vm-1-2's id without its qemu: vm-1-2's owner
    hears it at once (critical), then that the server is in error; the owner of vm-1-1 on the same host hears
    nothing; vm-1-1 and the host are untouched."""
    dead, alive = "vm-1-2", "vm-1-1"
    owner, other = lab.server_owner[dead], lab.server_owner[alive]
    assert owner != other, "the lab gives the two servers of compute-1 different owners"
    inboxes: dict[str, list[fault_pb2.FaultNotification]] = {owner: [], other: []}
    ready = {p: asyncio.Event() for p in inboxes}

    async def consume(principal: str, c: DoctorClient) -> None:
        async for msg in c.subscribe_once():
            if msg.WhichOneof("kind") == "subscribed":
                ready[principal].set()
            else:
                inboxes[principal].append(msg.fault)
    clients = {p: DoctorClient(lab.endpoint, lab.tokens[p]) for p in inboxes}
    tasks = [asyncio.create_task(consume(p, c)) for p, c in clients.items()]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready.values())), 10)
        domain = agent_pb2.ComponentState(
            component="domain:instance-0002", checker="hypervisor", status=agent_pb2.COMPONENT_STATUS_FAULT,
            fault_type="compute.hypervisor.qemu.missing", severity=common_pb2.SEVERITY_CRITICAL,
            description="domain instance-0002 has no qemu process: its VM is dead",
            details={"domain": "instance-0002", "uuid": dead})
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(
                metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
                host_id="compute-1", boot_id="b", agent_version="t", components=[domain])))
            await wait_for(lambda: len(inboxes[owner]) >= 2, 10, what="the owner's notice, then the update")
            call.cancel()
        await asyncio.sleep(0.3)  # every chance for a wrong notification
        told, updated = inboxes[owner]  # at once, then once the controller set the server to error
        assert [v.virtual_resource_id for v in told.virtual_resource_info] == [dead, f"port-{dead}"]
        assert told.virtual_resource_info[0].faults[0].fault_type == "compute.hypervisor.qemu.missing"
        assert updated.virtual_resource_info[0].virtual_resource_state == "error"
        assert inboxes[other] == []
        states = {s.id: s.state for s in await lab.inspector.controller.servers_on_host("compute-1")}
        assert states == {dead: ServerState.ERROR, alive: ServerState.ACTIVE}
        assert lab.power("compute-1") == ("on", 0) and lab.inspector.alarms.incidents() == []
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients.values():
            await c.close()

"""The kernel's boot id tells a host reboot (the annex's "host restarted" fault) from an agent restart."""

from __future__ import annotations

import asyncio

import grpc

from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2, fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for


async def say_hello(lab: Lab, host: str, boot: str, kernel: str) -> None:
    """One agent stream: Hello, a heartbeat, Goodbye (an orderly stop: no agent alarm either)."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts[host].agent_token))
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            host_id=host, boot_id=boot, host_boot_id=kernel, agent_version="t")))
        await call.read()  # the config hint: the Hello was taken
        await call.write(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sent_unix_nanos=1)))
        await call.write(agent_pb2.AgentMessage(goodbye=agent_pb2.Goodbye(reason="test")))
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass


async def test_a_reboot_is_a_host_fault_an_agent_restart_is_not(lab: Lab) -> None:
    """The agent restarts (new agent boot id, same kernel boot id): nothing is raised. The host reboots (the
    kernel's boot id changes): its owners and administrators hear compute.host.restarted, raised then cleared."""
    owner = lab.server_owner["vm-1-1"]
    got: list[fault_pb2.FaultNotification] = []
    ready = asyncio.Event()

    async def consume(c: DoctorClient) -> None:
        async for msg in c.subscribe_once():
            if msg.WhichOneof("kind") == "subscribed":
                ready.set()
            else:
                got.append(msg.fault)
    async with DoctorClient(lab.endpoint, lab.tokens[owner]) as c:
        task = asyncio.create_task(consume(c))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            await say_hello(lab, "compute-1", "agent-run-1", "kernel-boot-A")
            await say_hello(lab, "compute-1", "agent-run-2", "kernel-boot-A")  # the agent restarted
            await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].boot_id == "agent-run-2", 5,
                           what="the second stream")
            await asyncio.sleep(0.2)  # every chance for a wrong notification to arrive
            assert got == []
            await say_hello(lab, "compute-1", "agent-run-3", "kernel-boot-B")  # the host rebooted
            await wait_for(lambda: len(got) >= 2, 5, what="restarted, raised and cleared")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    faults = [v.faults[0] for n in got for v in n.virtual_resource_info if v.virtual_resource_id == "vm-1-1"]
    assert [f.fault_type for f in faults] == ["compute.host.restarted"] * 2
    assert [f.state for f in faults] == [common_pb2.ALARM_STATE_FIRED, common_pb2.ALARM_STATE_CLEARED]
    assert faults[0].fault_details["boot_id"] == "kernel-boot-B"

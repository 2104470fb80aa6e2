"""GC pacing thaws (one full collection walking everything alive, about a second at 10,000 agent streams) only
once streams ended: the inspector counts its ended agent streams and subscriptions (doctor_common/gc_pacing.py)."""

from __future__ import annotations

import grpc

from doctor_common.api import agent_pb2, agent_pb2_grpc, fault_pb2, fault_pb2_grpc
from doctor_common.gc_pacing import PACING
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for


async def test_ended_agent_streams_and_subscriptions_count_toward_the_thaw(lab: Lab) -> None:
    before = PACING.ended_since
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        sub = fault_pb2_grpc.FaultManagementStub(ch).Subscribe(fault_pb2.SubscribeRequest(),
                                                               metadata=auth_metadata(lab.tokens["admin"]))
        assert (await sub.read()).WhichOneof("kind") == "subscribed"
        agent = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await agent.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="compute-1", boot_id="b",
                                                                      agent_version="t")))
        await agent.read()  # the config hint: the stream is attached
        assert PACING.ended_since == before  # open streams are not counted
        await agent.write(agent_pb2.AgentMessage(goodbye=agent_pb2.Goodbye(reason="test")))
        await agent.done_writing()
        while await agent.read() is not grpc.aio.EOF:
            pass
        await wait_for(lambda: PACING.ended_since == before + 1, 10, 0.01, "the agent stream counted")
        sub.cancel()
        await wait_for(lambda: PACING.ended_since == before + 2, 10, 0.01, "the subscription counted")

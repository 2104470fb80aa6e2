"""A follower does not send clients to a leader that is evidently gone: it holds them for the next one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from doctor_common.api import agent_pb2, agent_pb2_grpc, fault_pb2, fault_pb2_grpc
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster


async def test_clients_arriving_at_a_follower_after_the_leader_died_are_held_and_served_by_the_next(
        ha: Any, shared_etcd: EtcdCluster) -> None:
    """Right after the leader is SIGKILLed (its lease still names it), an agent's Hello and a consumer resuming
    its subscription arrive at the follower. The follower sees the named leader does not answer and holds both
    calls instead of redirecting them to it; when it takes over ~1 s later it serves them on the same calls:
    the agent gets the leader's config, the consumer its snapshot under the same subscription id."""
    lab = await ha(shared_etcd, replicas=2, hosts=1, netns=False, agents=False)
    consumer = await ha.consumer(lab, "admin")
    sub_id = consumer.snapshots[0].subscription_id
    await consumer.close()
    follower = lab.replicas[1].endpoint

    async def mirrored() -> bool:  # the follower copied the subscription's record from etcd (its own watch)
        status = await lab.status(1)
        return status is not None and sub_id in {s.subscription_id for s in status.subscriptions}
    await wait_for(mirrored, 10, 0.02, "the follower to know the subscription")
    killed = await lab.kill_replica(0)

    async with grpc.aio.insecure_channel(follower) as ch:
        agent = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await agent.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="compute-1", boot_id="b")))
        sub = fault_pb2_grpc.FaultManagementStub(ch).Subscribe(
            fault_pb2.SubscribeRequest(subscription_id=sub_id), metadata=auth_metadata(lab.tokens["admin"]))
        async with asyncio.timeout(10):  # held at most lease TTL + 1.5 s
            first_agent = await agent.read()
            agent_at = time.monotonic()
            first_sub = await sub.read()
        sub.cancel()
        agent.cancel()
    assert first_agent.WhichOneof("kind") == "config", f"not held: {first_agent}"
    assert first_sub.WhichOneof("kind") == "subscribed" and first_sub.subscribed.subscription_id == sub_id
    status = await lab.status(1)
    assert status is not None and status.role == "leader"
    assert 0.5 < agent_at - killed < 4.0, "served once the follower took over, after the lease expired"

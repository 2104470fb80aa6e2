"""Every replica serves consumers from the log the leader writes (issue 14, item 2; docs/ha.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import assert_delivered_exactly_once, read_log
from tests.integration.ha.test_consumer_resume import report


def sensor_faults_on(resp: Any, host: str) -> list[str]:
    return [f.fault_type for p in resp.physical_resource_info if p.physical_resource_id == host for f in p.faults]


async def test_consumers_on_every_replica_get_each_notification_once_and_see_its_state(
        ha: Any, shared_etcd: EtcdCluster) -> None:
    """An administrator subscribed at each of three replicas, and a project at a follower: a monitor's warnings,
    decided and logged by the leader, reach every one of them once, in order, without any reconnecting; the
    followers' Diagnostics list the streams they serve; and as soon as a follower has delivered a notice its
    QueryFaults shows the fault (it applies a revision's alarms before relaying its entries)."""
    lab = await ha(shared_etcd, replicas=3, hosts=2, netns=False, agents=False)
    leader = await lab.wait_leader()  # (one status read may time out on a loaded machine)
    assert leader == 0
    followers = [r for r in lab.replicas if r.index != leader]
    admins = [await ha.consumer(lab, "admin", [r.endpoint]) for r in lab.replicas]
    project = await ha.consumer(lab, "project-a", [followers[0].endpoint])
    for k in range(5):
        await report(lab, lab.replicas[leader].endpoint, f"m{k}")

    async def logged() -> bool:
        return len(await read_log(lab)) >= 5
    await wait_for(logged, 10, 0.02, "the leader to log the five warnings")
    await assert_delivered_exactly_once(lab, [*admins, project])
    assert all(len(c.snapshots) == 1 for c in [*admins, project]), "no stream was interrupted"
    assert len(admins[1].faults) >= 5 and admins[1].faults[0].physical_resource_info[0].physical_resource_id == "compute-1"

    for r in followers:
        async with DoctorClient(r.endpoint, lab.tokens["admin"]) as c:
            assert "compute.host.sensor.warning" in sensor_faults_on(await c.query_faults(), "compute-1")
        mine = {c.snapshots[-1].subscription_id for c in [*admins, project] if c.client.endpoints == [r.endpoint]}

        async def lists_them(index: int = r.index, mine: set[str] = mine) -> bool:
            # (a loaded machine may have a follower send its streams on and the consumers come back meanwhile)
            status = await lab.status(index)
            assert status is not None and status.role == "follower"
            return mine <= {s.subscription_id for s in status.subscriptions if s.connected}
        await wait_for(lists_them, 10, 0.05, f"replica {r.index} to list its consumers' streams as connected")


async def test_a_followers_consumers_keep_their_stream_across_a_leader_kill(
        ha: Any, shared_etcd: EtcdCluster) -> None:
    """A consumer subscribed at a follower while the leader is SIGKILLed: its stream is never interrupted and
    every notification the old and the new leader log reaches it once, in order."""
    lab = await ha(shared_etcd, replicas=3, hosts=2, netns=False, agents=False)
    old = await lab.wait_leader()  # (one status read may time out on a loaded machine)
    assert old == 0
    watcher = await ha.consumer(lab, "admin", [lab.replicas[2].endpoint])
    target = lab.endpoints[0]
    for k in range(12):
        if k == 4:
            await lab.kill_replica(old)
        target = await report(lab, target, f"m{k}")
    new = await lab.wait_leader(exclude=(old,))
    assert new in (1, 2)

    async def logged() -> bool:
        log = await read_log(lab)
        return any(n.physical_resource_info[0].faults[0].fault_details.get("monitor_id") == "m11" for n in log)
    await wait_for(logged, 10, 0.02, "the new leader to log the last warning")
    await assert_delivered_exactly_once(lab, [watcher])
    assert len(watcher.snapshots) == 1, "the follower's stream outlived the change of leader"


async def test_a_replica_that_loses_etcd_sends_its_consumers_to_another(
        ha: Any, own_etcd: EtcdCluster) -> None:
    """Two of three etcd members die: a follower can no longer read the log, so it ends its streams with
    UNAVAILABLE and the cursor to resume from (silence it cannot vouch for is not served) and refuses new ones;
    once etcd is back it serves again, and a resume from that cursor misses nothing."""
    lab = await ha(own_etcd, replicas=2, hosts=2, netns=False, agents=False)
    follower = lab.replicas[1]
    await report(lab, lab.replicas[0].endpoint, "before")

    async def relayed() -> bool:  # by the follower, from its own watch of the log (a moment behind etcd's)
        async with DoctorClient(follower.endpoint, lab.tokens["admin"], follow_leader=False) as probe:
            first = await anext(probe.subscribe_once(resume_after=0))
            return first.subscribed.last_sequence >= 1
    await wait_for(relayed, 10, 0.05, "the follower to relay the warning")
    async with DoctorClient(follower.endpoint, lab.tokens["admin"], follow_leader=False) as c:  # this replica itself
        stream = c.subscribe_once(resume_after=0)
        first = await anext(stream)
        assert first.WhichOneof("kind") == "subscribed"
        cursor = first.subscribed.last_sequence
        assert cursor >= 1
        raft = own_etcd.leader()
        victims = [(raft + 1) % 3, (raft + 2) % 3]
        for v in victims:
            own_etcd.kill(v)
        try:
            async with asyncio.timeout(15):  # the feed's stale bound (lease TTL + 1 s) plus a read's deadline
                async for msg in stream:
                    raise AssertionError(f"nothing was logged, yet the follower sent {msg}")
            raise AssertionError("the stream ended without a status")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            assert f"resume_after={cursor}" in (exc.details() or "") and "another replica" in (exc.details() or "")
        refused = None
        try:
            await c.query_faults(timeout=5)
        except grpc.aio.AioRpcError as exc:
            refused = exc
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE

        for v in victims:
            own_etcd.restart(v)
        await lab.wait_leader(timeout=20)

        async def served() -> bool:
            try:
                await c.query_faults(timeout=2)
                return True
            except grpc.aio.AioRpcError:
                return False
        await wait_for(served, 20, 0.05, "the follower to serve again")
    await report(lab, lab.endpoints[0], "after")
    async with DoctorClient(follower.endpoint, lab.tokens["admin"], follow_leader=False) as c:  # this replica itself
        got = []
        async for msg in c.subscribe_once(resume_after=cursor):
            if msg.WhichOneof("kind") == "fault":
                got.append(msg.fault)
                break
        assert got and got[0].sequence == cursor + 1
        assert got[0].physical_resource_info[0].faults[0].fault_details["monitor_id"] == "after"

"""The fleet guard in replicated mode: a held mass silence stays held across a leader's death."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from doctor_common.api import fault_pb2
from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster

HOSTS = ("compute-1", "compute-2", "compute-3")


def phases(consumer: Any, host: str) -> list[int]:
    return [n.phase for n in consumer.faults for p in n.physical_resource_info if p.physical_resource_id == host]


async def test_every_agent_silent_across_a_takeover_powers_nothing_off(
        ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """Every agent frozen: the leader holds all three hosts; it is SIGKILLed; the next leader reads the held
    incidents from etcd, judges them again once the takeover grace is over, and holds them again: not one
    power-off in all. The agents thawed, every suspicion is withdrawn."""
    lab = await ha(shared_etcd, hosts=3, takeover_grace_ms=1000)
    admin = await ha.consumer(lab, "admin")
    leader = await lab.wait_leader()  # (one status read may time out on a loaded machine)
    assert leader is not None
    for h in HOSTS:
        lab.freeze_agent(h)
    try:
        await wait_for(lambda: all(fault_pb2.INCIDENT_PHASE_HELD in phases(admin, h) for h in HOSTS), 10, 0.01,
                       "every host held")
        await lab.kill_replica(leader)
        new = await lab.wait_leader(exclude=(leader,))
        # the new leader's grace (1 s) and liveness timeout pass, then it judges the silence again
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            assert all(lab.power(h) == ("on", 0) for h in HOSTS), "a replica powered off a silent host"
            await asyncio.sleep(0.05)
        status = await lab.status(new)
        assert status is not None and [c.cause for c in status.guard.causes] == ["fleet"]
    finally:
        for h in HOSTS:
            lab.thaw_agent(h)
    await wait_for(lambda: all(fault_pb2.INCIDENT_PHASE_WITHDRAWN in phases(admin, h) for h in HOSTS), 20, 0.01,
                   "every suspicion withdrawn")
    assert all(lab.power(h) == ("on", 0) for h in HOSTS)

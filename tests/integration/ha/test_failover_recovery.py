"""SIGKILL the leading inspector at exact points of a recovery: the next leader finishes it, each step once.

The leader (replica 0) runs with the test hook ``DOCTOR_TEST_CRASH_AT`` (see
``inspector/response/crashpoint.py``) and kills itself right after the named point of
the recovery that cutting compute-1's link starts; replica 1 then takes over.
"""

from __future__ import annotations

from typing import Any

import pytest

from doctor_common.api import common_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from doctor_common.lab.replicated import HaLab
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import (
    INCIDENT_PHASES,
    assert_delivered_exactly_once,
    keys_under,
    phases_of,
    read_log,
)

PROJECTS = ("project-a", "project-b", "project-c")  # servers: vm-1-1 a, vm-1-2 b, vm-2-1 c, vm-2-2 a

# what the replica that takes over still has to do, by crash point
LEFT_TO_DO = {
    "before_fence": "fence, confirm_off, notify_fenced, mark_down, servers_error, notify still to do",
    "after_fence": "notify_fenced, mark_down, servers_error, notify still to do",
    "after_publish": "only closing it",
}


async def host_info(lab: HaLab, replica: int, host: str) -> Any:
    async with DoctorClient(lab.replicas[replica].endpoint, lab.tokens["admin"]) as c:
        return next(h for h in (await c.hosts()).hosts if h.host_id == host)


@pytest.mark.parametrize("point", ["before_fence", "after_fence", "after_publish"])
async def test_leader_killed_mid_recovery_the_next_one_finishes_it_once(
        point: str, ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """The leader dies (SIGKILL) before fencing / after fencing, before marking down / after publishing, before
    any consumer read: the next leader finishes the journalled incident. Exactly one power-off reaches the
    BMC, the host ends DOWN, the log holds each notice of the incident once (suspected, fenced, marked down),
    and every consumer receives every notification it may see exactly once, in order (project-c owns nothing
    on compute-1: it hears nothing)."""
    lab = await ha(shared_etcd, first_env={"DOCTOR_TEST_CRASH_AT": point}, hosts=2, projects=PROJECTS)
    consumers = [await ha.consumer(lab, p) for p in (*PROJECTS, "admin")]
    assert await lab.wait_leader() == 0

    lab.cut_link("compute-1")
    proc = lab.replicas[0].proc
    assert proc is not None
    await wait_for(lambda: proc.returncode is not None, 10, 0.01, "the leader to kill itself")
    assert proc.returncode == -9 and f"TEST HOOK: SIGKILL at {point}" in lab.replica_log(0)
    assert await lab.wait_leader(exclude=(0,)) == 1

    admin = consumers[-1]
    await wait_for(admin.done, 10, 0.01, "the notification from the new leader")
    await assert_delivered_exactly_once(lab, consumers)
    assert consumers[2].faults == [], "project-c owns nothing on compute-1"
    assert {c.snapshots[0].subscription_id for c in consumers} == {c.snapshots[-1].subscription_id
                                                                  for c in consumers}, "subscriptions recognised"

    assert lab.power("compute-1") == ("off", 1), "exactly one power-off reached the BMC"
    assert lab.power("compute-2") == ("on", 0)
    info = await host_info(lab, 1, "compute-1")
    assert info.forced_down and info.host_status == common_pb2.HOST_STATUS_DOWN

    log = await read_log(lab)
    assert phases_of(log, "compute-1", "compute.host.nic.down") == INCIDENT_PHASES, "each notice once, in order"
    assert log[-1].fenced
    assert LEFT_TO_DO[point] in lab.replica_log(1)

    async def journal_closed() -> bool:
        return await keys_under(lab, "recovery") == []
    await wait_for(journal_closed, 5, 0.05, "the incident's journal to be closed")


async def test_a_host_that_dies_during_the_takeover_is_still_noticed(
        ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """compute-2's agent falls silent (SIGSTOP) just as the leader is SIGKILLed, so it never says Hello to the
    next one. The new leader expects every host the old one had up (kept in etcd), gives them the takeover
    grace, then declares compute-2 unreachable: fenced once, each notice once. compute-1, back in time, is left
    on."""
    lab = await ha(shared_etcd, hosts=2, takeover_grace_ms=1500)
    admin = await ha.consumer(lab, "admin")

    async def both_up_in_etcd() -> bool:
        return await keys_under(lab, "hosts") == ["hosts/compute-1", "hosts/compute-2"]
    await wait_for(both_up_in_etcd, 5, 0.02, "the leader to record both hosts up")
    lab.freeze_agent("compute-2")
    await lab.kill_replica(0)
    assert await lab.wait_leader(exclude=(0,)) == 1
    assert "waiting up to 1.5s for 2 agents" in lab.replica_log(1)

    await wait_for(admin.done, 15, 0.01, "compute-2 to be declared unreachable")
    await assert_delivered_exactly_once(lab, [admin])
    assert [n.phase for n in admin.faults] == INCIDENT_PHASES
    n = admin.faults[-1]
    [host] = n.physical_resource_info
    assert host.physical_resource_id == "compute-2" and host.faults[0].fault_type == "compute.host.unreachable"
    assert n.fenced and lab.power("compute-2") == ("off", 1)
    # compute-1 said Hello to the new leader in time: up and connected there, so never judged (its power-off
    # would still be in flight now, were it being fenced)
    status = await lab.status(1)
    assert status is not None
    [one] = [a for a in status.agents if a.host_id == "compute-1"]
    assert (one.liveness, one.connected) == ("up", True)
    assert lab.power("compute-1") == ("on", 0)

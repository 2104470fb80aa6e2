"""A leader frozen mid-recovery wakes up after another took over: etcd refuses its write (the fencing token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import INCIDENT_PHASES, assert_delivered_exactly_once, phases_of, read_log


def stopped(pid: int) -> bool:
    """The process is in state T (stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


async def test_stale_leader_write_is_refused_by_the_fencing_token(
        ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """Replica 0 freezes (the test hook SIGSTOPs it) after marking compute-1 down, just before it appends the
    notification. Replica 1 takes over and finishes the incident. Woken, replica 0 still believes it leads
    (its step-down timer has not run yet) and sends its append with its old token: etcd refuses it, so the
    log holds each notice of the incident once, and the consumer receives it once. One power-off in all."""
    lab = await ha(shared_etcd, first_env={"DOCTOR_TEST_PAUSE_AT": "after_mark_down"}, hosts=2)
    admin = await ha.consumer(lab, "admin")
    old = await lab.status(0)
    assert old is not None and old.role == "leader"

    lab.cut_link("compute-1")
    proc = lab.replicas[0].proc
    assert proc is not None
    await wait_for(lambda: stopped(proc.pid), 10, 0.01, "replica 0 to freeze after marking down")
    assert await lab.wait_leader(exclude=(0,)) == 1
    await wait_for(admin.done, 10, 0.01, "replica 1 to finish the incident")
    new = await lab.status(1)
    assert new is not None and new.leader_token > old.leader_token

    lab.resume_replica(0)
    refusal = f"fencing token {old.leader_token} is stale: the leader key is held by replica-1"
    await wait_for(lambda: refusal in lab.replica_log(0), 10, 0.01, "etcd to refuse the woken leader's append")
    assert "TEST HOOK: continued after after_mark_down" in lab.replica_log(0)

    async def follows() -> bool:
        s = await lab.status(0)
        return s is not None and s.role == "follower" and s.leader_endpoint == lab.replicas[1].endpoint
    await wait_for(follows, 5, 0.02, "replica 0 to follow replica 1")

    assert phases_of(await read_log(lab), "compute-1", "compute.host.nic.down") == INCIDENT_PHASES, \
        "the stale leader's final notice did not land: each notice once"
    await assert_delivered_exactly_once(lab, [admin])
    assert lab.power("compute-1") == ("off", 1)

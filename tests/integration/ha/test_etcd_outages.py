"""etcd members die under replicated inspectors: one member is nothing, a lost quorum stops every action."""

from __future__ import annotations

import time
from typing import Any

from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import INCIDENT_PHASES, assert_delivered_exactly_once, phases_of, read_log


async def test_losing_one_etcd_member_interrupts_nothing(ha: Any, own_etcd: EtcdCluster, needs_root: None) -> None:
    """With one etcd member (a raft follower) SIGKILLed, the same replica keeps leading with the same token and
    handles a link cut as usual: one power-off, each notice of the incident once, delivered once."""
    lab = await ha(own_etcd, hosts=2)
    admin = await ha.consumer(lab, "admin")
    leader = await lab.wait_leader()  # (one status read may time out on a loaded machine)
    before = await lab.status(leader)
    assert before is not None and before.leader_token > 0
    logged = len(lab.replica_log(leader))  # what the start-up wrote (a loaded machine may re-elect there)
    own_etcd.kill((own_etcd.leader() + 1) % 3)

    lab.cut_link("compute-1")
    await wait_for(admin.done, 10, 0.01, "the notification")
    await assert_delivered_exactly_once(lab, [admin])
    assert lab.power("compute-1") == ("off", 1)
    after = await lab.status(leader)
    assert after is not None and after.role == "leader" and after.leader_token == before.leader_token
    assert "stopped leading" not in lab.replica_log(leader)[logged:], "the term was never interrupted by the kill"
    assert len(admin.snapshots) == 1, "the consumer's stream was never interrupted"


async def test_without_quorum_nobody_acts_until_it_returns(ha: Any, own_etcd: EtcdCluster, needs_root: None) -> None:
    """Two of three etcd members die: the leader steps down and nobody leads; a link cut during the outage is
    not acted on (the BMC stays on); when the members return, a leader takes over and fences the host, once,
    announcing each notice of the incident once."""
    lab = await ha(own_etcd, hosts=2)
    admin = await ha.consumer(lab, "admin")
    leader = await lab.wait_leader()  # (one status read may time out on a loaded machine)
    assert leader is not None
    raft = own_etcd.leader()
    victims = [(raft + 1) % 3, (raft + 2) % 3]
    for v in victims:
        own_etcd.kill(v)

    async def nobody_leads() -> bool:
        reports = [await lab.status(r.index) for r in lab.replicas]
        return all(s is not None and s.role == "follower" for s in reports)
    await wait_for(nobody_leads, 5, 0.02, "the leader to step down")
    assert "stopped leading" in lab.replica_log(leader)

    lab.cut_link("compute-1")
    # absence of an action can only be observed over a period: watch the BMC for 2 lease TTLs
    until = time.monotonic() + 2.0
    while time.monotonic() < until:
        assert lab.power("compute-1") == ("on", 0), "a replica acted without quorum"
        assert await lab.leader() is None
    assert admin.faults == []

    for v in victims:
        own_etcd.restart(v)
    await lab.wait_leader()
    await wait_for(admin.done, 15, 0.01, "the notification after quorum returned")
    await assert_delivered_exactly_once(lab, [admin])
    assert lab.power("compute-1") == ("off", 1), "fenced once quorum returned, exactly once"
    assert phases_of(await read_log(lab), "compute-1", "compute.host.nic.down") == INCIDENT_PHASES

"""examples/vnfm.py across a leader failover: it follows the new leader and misses nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from doctor_common.lab.cloud import wait_for
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import read_log
from tests.integration.vnfm_example import Vnfm

PAIR = ("vm-1-1", "vm-2-1")


async def test_the_vnfm_follows_the_new_leader_and_switches_over_there(ha: Any, shared_etcd: EtcdCluster,
                                                                       tmp_path: Path) -> None:
    """The VNFM is given both replicas. The leader is SIGKILLed: its stream moves to the new leader, which
    recognises the subscription. compute-1 (the active server's host) then loses its link: the new leader fences
    it and the VNFM switches over once, having printed exactly the notices the etcd log holds for its servers."""
    lab = await ha(shared_etcd, hosts=2, servers_per_host=1, projects=("project-a",), takeover_grace_ms=1500)
    v = Vnfm(lab, "project-a", *PAIR, tmp_path, endpoints=lab.endpoints)
    try:
        await v.start()
        old = await lab.wait_leader()
        await lab.kill_replica(old)
        new = await lab.wait_leader(exclude=(old,))
        await wait_for(lambda: v.text().count("subscribed (") >= 2, 15, 0.01, "the VNFM at the new leader")
        await lab.wait_agents(on=new)
        lab.cut_link("compute-1")
        await wait_for(lambda: "phase marked_down" in v.text(), 15, 0.01, "the VNFM to hear the whole incident")
    finally:
        await v.stop()
    s = v.state()
    assert (s["active"], s["standby"]) == ("vm-2-1", "vm-1-1"), v.text()
    log = await read_log(lab)
    want = [n.sequence for n in log if any(r.virtual_resource_id in PAIR and r.virtual_resource_type == "server"
                                            for r in n.virtual_resource_info)]
    assert len(want) == 3 and [seq for seq, _ in v.notices()] == want, v.text()
    [switch] = s["switchovers"]
    assert switch["sequence"] == want[0], "on the new leader's suspected notice"
    assert len(set(re.findall(r"subscribed \((\w+)\)", v.text()))) == 1, "the new leader resumed the subscription"

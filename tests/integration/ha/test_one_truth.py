"""Replicated mode with the embedded controller: the resource map's state lives in etcd, so a new leader sees
what the old one marked down and can put it back in service."""

from __future__ import annotations

import json
from typing import Any

from doctor_common.api import common_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from doctor_common.lab.replicated import HaLab
from inspector.ha.etcd_config import EtcdConfig, connect
from tests.etcd_cluster import EtcdCluster


async def host_info(lab: HaLab, replica: int, host: str) -> Any:
    async with DoctorClient(lab.replicas[replica].endpoint, lab.tokens["admin"]) as c:
        return next(h for h in (await c.hosts()).hosts if h.host_id == host)


async def stored_host(lab: HaLab, host: str) -> dict[str, Any]:
    async with connect(EtcdConfig(endpoints=tuple(lab.etcd_endpoints), prefix=lab.prefix)) as client:
        kv = await client.get(f"{lab.prefix}/controller/host/{host}".encode())
    return json.loads(kv.value) if kv is not None else {}


async def test_the_next_leader_sees_what_the_last_one_marked_down_and_can_enable_it(
        ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """compute-1 loses its link: leader 0 fences it and marks it down (in etcd, under its token). Leader 0 is
    SIGKILLed; replica 1 leads and reports compute-1 DOWN with its servers in error, from etcd, not from a file
    of its own. Once the host is back (link, power), enable-host on the new leader puts it in service and etcd
    says so; no replica keeps a controller state file."""
    lab = await ha(shared_etcd, hosts=2)
    lab.cut_link("compute-1")
    await wait_for(lambda: lab.power("compute-1") == ("off", 1), 10, 0.01, "compute-1 to be fenced")

    async def marked_down() -> bool:
        return bool((await stored_host(lab, "compute-1")).get("forced_down"))
    await wait_for(marked_down, 10, 0.02, "the leader to mark compute-1 down in etcd")

    await lab.kill_replica(0)
    assert await lab.wait_leader(exclude=(0,)) == 1
    info = await host_info(lab, 1, "compute-1")
    assert info.forced_down and info.host_status == common_pb2.HOST_STATUS_DOWN
    async with DoctorClient(lab.replicas[1].endpoint, lab.tokens["admin"]) as c:
        vms = [v for v in (await c.query_faults()).virtual_resource_info if v.physical_resource_id == "compute-1"
           and v.virtual_resource_type == "server"]
    assert vms and all(v.virtual_resource_state == "error" for v in vms)
    assert (await host_info(lab, 1, "compute-2")).host_status == common_pb2.HOST_STATUS_UP

    lab.restore_link("compute-1")
    async with DoctorClient(lab.replicas[1].endpoint, lab.tokens["admin"]) as c:
        enabled = await c.enable_host("compute-1", force=True)  # the BMC still reports off: the operator knows
    assert not enabled.forced_down and enabled.host_status != common_pb2.HOST_STATUS_DOWN
    assert (await stored_host(lab, "compute-1"))["forced_down"] is False
    assert lab.power("compute-1") == ("off", 1), "nothing powered it off again"
    assert not list(lab.dir.rglob("*.sqlite")), "no replica keeps state of its own"

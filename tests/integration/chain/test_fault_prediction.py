"""Fault prediction end to end (issue 12, item 6): a BMC sensor's warning reaches the owners, nothing is fenced."""

from __future__ import annotations

from doctor_common.api import common_pb2
from doctor_common.lab.cloud import wait_for

SENSORS = [
    {"name": "CPU1 Temp", "type": "temperature", "value": 45, "unc": 80, "uc": 90, "unr": 100},
    {"name": "FAN1", "type": "fan", "value": 5400, "m": 100, "lnc": 1500, "lc": 1000},
]


async def test_a_slowing_fan_warns_its_owners(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1's fan slows below its warning threshold on the virtual BMC: the agent's ipmi checker reads it
    over IPMI, and the owners of compute-1's servers (only they) hear the warning the default policy passes
    on; the host is not touched. The fan recovers: the warning is cleared to them."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a", "project-b"), netns=False,
                         sensors=SENSORS)
    owner, other = lab.server_owner["vm-1-1"], lab.server_owner["vm-2-1"]
    mine, theirs = await make_lab.consumer(lab, owner), await make_lab.consumer(lab, other)
    await wait_for(lambda: "ipmi:FAN1" in lab.inspector.liveness.hosts["compute-1"].components, 20,
                   what="the agent's first sensor sweep")
    lab.set_sensor("compute-1", "FAN1", value=1200)
    await wait_for(lambda: mine.faults, 20, what="the warning")
    f = mine.faults[0].virtual_resource_info[0].faults[0]
    assert f.fault_type == "compute.host.ipmi.fan" and f.severity == common_pb2.SEVERITY_WARNING
    assert mine.resource_ids() == {"vm-1-1", "port-vm-1-1"} and theirs.faults == []
    assert lab.power("compute-1") == ("on", 0) and lab.inspector.alarms.incidents() == []
    lab.set_sensor("compute-1", "FAN1", value=5400)
    await wait_for(lambda: len(mine.faults) >= 2, 20, what="the warning cleared")
    assert mine.faults[-1].virtual_resource_info[0].faults[0].state == common_pb2.ALARM_STATE_CLEARED

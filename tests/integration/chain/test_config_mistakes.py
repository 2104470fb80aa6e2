"""Small mistakes give no wrong verdicts (issue 12, item 1): a typo in an agent's config fences nothing."""

from __future__ import annotations

import asyncio

from doctor_common.lab.cloud import wait_for


async def test_an_interface_the_host_never_had_is_a_warning_to_administrators(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The nic checker lists eth0 and a typo (eht9): administrators get a warning naming the typo; the owners
    hear nothing and nothing is powered off."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), nic_interfaces=("eth0", "eht9"))
    admin = await make_lab.consumer(lab, "admin")
    owner = await make_lab.consumer(lab, "project-a")

    async def warnings() -> list:  # type: ignore[type-arg]
        r = await admin.client.query_faults()
        return [f for p in r.physical_resource_info for f in p.faults]
    faults = await wait_for(lambda: _two(warnings()), 10, what="the warnings")
    assert {f.fault_type for f in faults} == {"compute.host.agent.misconfigured"}
    assert all("eht9" in f.probable_cause for f in faults)
    await asyncio.sleep(0.5)  # every chance for a wrong verdict
    assert owner.faults == [] and not (await owner.client.query_faults()).virtual_resource_info
    assert all(lab.power(h) == ("on", 0) for h in lab.hosts) and lab.inspector.alarms.incidents() == []


async def _two(found):  # type: ignore[no-untyped-def]
    got = await found
    return got if len(got) >= 2 else None

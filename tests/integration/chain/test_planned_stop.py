"""A planned stop of the inspector raises nothing about its agents (issue 12, item 4)."""

from __future__ import annotations

from doctor_common.lab.cloud import wait_for


async def test_stopping_the_inspector_raises_no_agent_alarm(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The inspector stops (SIGTERM's path): the agents' streams end because *it* ends them, which is not the
    agents dying; the log it leaves holds no compute.host.agent.down, and no alarm is raised."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    await wait_for(lambda: all(r.connected for r in lab.inspector.liveness.hosts.values()), 10, what="agents")
    inspector = lab.inspector
    await inspector.stop(0.2)
    lab.inspector = None  # stopped already: the lab's teardown must not stop it again
    logged = [f.fault_type for n in inspector.log._cache for p in n.physical_resource_info for f in p.faults]
    assert "compute.host.agent.down" not in logged and len(inspector.alarms) == 0
    assert {r.liveness for r in inspector.liveness.hosts.values()} == {"up"}

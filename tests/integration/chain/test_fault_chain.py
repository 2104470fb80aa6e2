"""The whole fault chain, for real: netns link cut -> agent -> inspector -> IPMI fence -> controller -> owners."""

from __future__ import annotations

from controller_adapter.base import HostStatus, ServerState
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.lab.cloud import wait_for
from doctor_common.timeline import Stage, as_dict

PROJECTS = ("project-a", "project-b", "project-c")
P = fault_pb2.IncidentPhase
SUSPECTED, FENCED, MARKED_DOWN = P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED, P.INCIDENT_PHASE_MARKED_DOWN


async def test_nic_down_fences_marks_down_and_notifies_only_the_owners(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Cutting compute-1's link powers its BMC off, marks it DOWN, sets its servers ERROR and its ports DOWN,
    and notifies exactly the owners of those servers (and the administrator, with the host fault): first the
    suspicion (host status UNKNOWN), then the confirmed power-off, then the controller's completion."""
    lab = await make_lab(hosts=3, servers_per_host=2, projects=PROJECTS)
    consumers = {p: await make_lab.consumer(lab, p) for p in (*PROJECTS, "admin")}
    victims = lab.hosts["compute-1"].servers  # vm-1-1 (project-a), vm-1-2 (project-b)
    assert consumers["project-a"].snapshot is not None
    assert {v.virtual_resource_id for v in consumers["project-a"].snapshot.virtual_resource_info} >= {"vm-1-1"}

    lab.cut_link("compute-1")
    await wait_for(lambda: all(consumers[p].of_phase(MARKED_DOWN) for p in ("project-a", "project-b", "admin")),
                   10, what="notifications")

    assert lab.power("compute-1") == ("off", 1), "the BMC was really powered off, once"
    assert lab.power("compute-2")[0] == "on" and lab.power("compute-3")[0] == "on"
    ctl = lab.inspector.controller
    assert (await ctl.get_host("compute-1")).status == HostStatus.DOWN
    assert {s.id: s.state for s in await ctl.servers_on_host("compute-1")} == {v: ServerState.ERROR for v in victims}
    assert {p.data_plane_status for p in await ctl.ports_on_host("compute-1")} == {"DOWN"}
    assert {s.state for s in await ctl.servers_on_host("compute-2")} == {ServerState.ACTIVE}

    for p in ("project-a", "project-b", "admin"):
        assert consumers[p].phases() == [SUSPECTED, FENCED, MARKED_DOWN], p
    suspected, fenced = consumers["project-a"].faults[:2]
    sv = next(v for v in suspected.virtual_resource_info if v.virtual_resource_id == "vm-1-1")
    assert not suspected.fenced and sv.host_status == common_pb2.HOST_STATUS_UNKNOWN
    assert sv.virtual_resource_state == "normal", "nothing is done to the server on a suspicion"
    fv = next(v for v in fenced.virtual_resource_info if v.virtual_resource_id == "vm-1-1")
    assert fenced.fenced and fv.host_status == common_pb2.HOST_STATUS_DOWN
    assert Stage.STAGE_FENCE_PUBLISHED in as_dict(fenced.timeline)
    a, b = consumers["project-a"].faults[2], consumers["project-b"].faults[2]
    assert consumers["project-a"].resource_ids() == {"vm-1-1", "port-vm-1-1"}
    assert consumers["project-b"].resource_ids() == {"vm-1-2", "port-vm-1-2"}
    assert not a.physical_resource_info and a.fenced
    vm = next(v for v in a.virtual_resource_info if v.virtual_resource_id == "vm-1-1")
    assert vm.virtual_resource_state == "error" and vm.host_status == common_pb2.HOST_STATUS_DOWN
    assert vm.faults[0].fault_type == "compute.host.nic.down" and vm.faults[0].root_cause_resource_id == "compute-1"
    assert a.notification_id == b.notification_id and vm.faults[0].fault_id == b.virtual_resource_info[0].faults[0].fault_id

    admin = consumers["admin"].faults[2]
    assert [p.physical_resource_id for p in admin.physical_resource_info] == ["compute-1"]
    assert admin.physical_resource_info[0].faults[0].is_root_cause
    assert consumers["admin"].resource_ids() == {*victims, *(f"port-{v}" for v in victims)}

    stamps = as_dict(a.timeline)
    chain = [Stage.STAGE_OBSERVED, Stage.STAGE_SENT, Stage.STAGE_RECEIVED, Stage.STAGE_CORRELATED,
             Stage.STAGE_SUSPECT_PUBLISHED, Stage.STAGE_FENCED, Stage.STAGE_FENCE_PUBLISHED, Stage.STAGE_PUBLISHED,
             Stage.STAGE_DELIVERED]
    assert all(s in stamps for s in [*chain, Stage.STAGE_MARKED_DOWN, Stage.STAGE_SERVERS_UPDATED])
    assert [stamps[s] for s in chain] == sorted(stamps[s] for s in chain), "stages happen in order"
    assert stamps[Stage.STAGE_MARKED_DOWN] >= stamps[Stage.STAGE_FENCED], "fence before you declare"

    # project-c owns nothing on compute-1: it hears nothing, even after everyone else did
    await wait_for(lambda: len(lab.inspector.registry) == 4, 5, what="subscriptions")
    assert consumers["project-c"].faults == []


async def test_unfenceable_host_is_reported_but_never_marked_down(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-2's BMC refuses our credentials: owners hear of the fault with fenced=false, the host is not DOWN,
    its servers are not set to error, and the BMC stays on."""
    lab = await make_lab(hosts=2, servers_per_host=2, unfenceable=("compute-2",))
    owner = lab.server_owner["vm-2-1"]
    c = await make_lab.consumer(lab, owner)
    lab.cut_link("compute-2")
    await wait_for(lambda: c.of_phase(P.INCIDENT_PHASE_UNFENCED), 10, what="notification")
    assert c.phases() == [SUSPECTED, P.INCIDENT_PHASE_UNFENCED]
    n = c.faults[-1]
    assert not n.fenced and "BMC" in n.fencing_error
    vm = next(v for v in n.virtual_resource_info if v.virtual_resource_id == "vm-2-1")
    assert vm.host_status == common_pb2.HOST_STATUS_UNKNOWN and vm.virtual_resource_state == "normal"
    assert vm.faults[0].fault_details["fenced"] == "false"
    assert Stage.STAGE_FENCED not in as_dict(n.timeline)
    host = await lab.inspector.controller.get_host("compute-2")
    assert not host.forced_down and host.status == HostStatus.UP
    assert {s.state for s in await lab.inspector.controller.servers_on_host("compute-2")} == {ServerState.ACTIVE}
    assert lab.power("compute-2") == ("on", 0)


async def test_agent_death_raises_an_agent_alarm_and_fences_nothing(make_lab) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of the agent: its kernel closes the stream; the administrator gets an agent alarm on the host,
    owners get nothing, and the host keeps running (agent death is not host death)."""
    lab = await make_lab(hosts=1, servers_per_host=2)
    admin = await make_lab.consumer(lab, "admin")
    owner = await make_lab.consumer(lab, "project-a")
    await lab.kill_agent("compute-1")
    await wait_for(lambda: admin.faults, 10, what="agent alarm")
    n = admin.faults[0]
    assert not n.virtual_resource_info
    assert n.physical_resource_info[0].faults[0].fault_type == "compute.host.agent.down"
    assert lab.inspector.liveness.hosts["compute-1"].liveness == "agent_down"
    assert lab.power("compute-1") == ("on", 0)
    assert not (await lab.inspector.controller.get_host("compute-1")).forced_down
    assert owner.faults == []

    # the agent comes back: level-triggered Hello clears the alarm
    await lab.start_agent(lab.hosts["compute-1"])
    await wait_for(lambda: len(admin.faults) == 2, 15, what="clearing")
    assert admin.faults[1].physical_resource_info[0].faults[0].state == common_pb2.ALARM_STATE_CLEARED
    assert len(lab.inspector.alarms) == 0


async def test_silent_host_is_confirmed_with_its_bmc_and_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A frozen agent (SIGSTOP) goes silent: after the liveness timeout the host is unreachable, fenced and
    marked down, and the owners are told."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    c = await make_lab.consumer(lab, "project-a")
    lab.freeze_agent("compute-2")
    try:
        await wait_for(lambda: c.of_phase(MARKED_DOWN), 10, what="notification")
    finally:
        lab.thaw_agent("compute-2")
    assert c.phases() == [SUSPECTED, FENCED, MARKED_DOWN]
    f = c.faults[-1].virtual_resource_info[0].faults[0]
    assert f.fault_type == "compute.host.unreachable" and c.faults[-1].fenced
    assert lab.power("compute-2") == ("off", 1)
    assert (await lab.inspector.controller.get_host("compute-2")).status == HostStatus.DOWN


async def test_fault_present_at_reconnect_is_acted_on(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Level-triggered: the link fails while the agent is down; the restarted agent's Hello carries the fault
    and the inspector fences the host."""
    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",))
    c = await make_lab.consumer(lab, "project-a")
    h = lab.hosts["compute-1"]
    await lab.kill_agent("compute-1")
    await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].liveness == "agent_down", 10, what="agent down")
    lab.cut_link("compute-1")
    await lab.start_agent(h)
    await wait_for(lambda: c.of_phase(MARKED_DOWN), 15, what="notification")
    assert c.faults[-1].virtual_resource_info[0].faults[0].fault_type == "compute.host.nic.down"
    assert lab.power("compute-1") == ("off", 1)


async def test_enable_host_clears_the_incident(make_lab) -> None:  # type: ignore[no-untyped-def]
    """EnableHost is refused while the host is still broken, naming what is (its NIC down, its BMC off); once
    repaired it lifts forced-down and clears the alarm; owners are told it cleared, and QueryFaults no longer
    lists it."""
    import grpc

    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",))
    c = await make_lab.consumer(lab, "project-a")
    lab.cut_link("compute-1")
    await wait_for(lambda: c.of_phase(MARKED_DOWN), 10, what="notification")
    assert (await c.client.query_faults()).virtual_resource_info
    from doctor_common.client import DoctorClient
    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as adm:
        try:
            await adm.enable_host("compute-1")
            raise AssertionError("a host with its NIC down and its BMC off was put back in service")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "nic:eth0" in exc.details() and "power off" in exc.details(), exc.details()
        # the repair: link back, powered on; its agent says the NIC is up
        lab.restore_link("compute-1")
        await lab.inspector.fencer.power_on(lab.inspector.responder.bmc_for("compute-1"))
        nic = lab.inspector.liveness.hosts["compute-1"].components
        await wait_for(lambda: nic["nic:eth0"].status == 1, 10, what="the NIC up again")
        info = await adm.enable_host("compute-1")
    assert info.host_status == common_pb2.HOST_STATUS_UP and not info.active_alarms
    await wait_for(lambda: len(c.faults) == 4, 10, what="cleared notification")
    assert c.faults[3].virtual_resource_info[0].faults[0].state == common_pb2.ALARM_STATE_CLEARED
    assert c.faults[3].phase == P.INCIDENT_PHASE_CLOSED
    assert not (await c.client.query_faults()).virtual_resource_info


async def test_a_forced_enable_raises_a_fault_still_there_again(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The administrator forces the host back although its link is still down: the inspector asks its agent for
    every level again, and the NIC fault, unchanged at the agent, is raised again (a new suspicion)."""
    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",),
                         extra_config="[guard]\nfence_burst = 10\nfleet_fence_burst = 10\n")
    c = await make_lab.consumer(lab, "project-a")
    lab.cut_link("compute-1")
    await wait_for(lambda: c.of_phase(MARKED_DOWN), 10, what="fenced")
    await lab.inspector.fencer.power_on(lab.inspector.responder.bmc_for("compute-1"))
    from doctor_common.client import DoctorClient
    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as adm:
        await adm.enable_host("compute-1", force=True)
    await wait_for(lambda: c.phases()[3:5] == [P.INCIDENT_PHASE_CLOSED, SUSPECTED], 10, what="raised again")
    assert c.faults[4].virtual_resource_info[0].faults[0].fault_type == "compute.host.nic.down"


async def test_doctorctl_profile_shows_the_faults_stages(make_lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """After a real fault, `doctorctl profile` prints its timeline and the seeds' per-stage table over Diagnostics."""
    import asyncio
    import sys

    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",))
    c = await make_lab.consumer(lab, "project-a")
    lab.cut_link("compute-1")
    await wait_for(lambda: c.of_phase(MARKED_DOWN), 10, what="notification")
    tok = tmp_path / "admin.token"
    tok.write_text(lab.tokens["admin"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "doctor_common.ctl", "--endpoint", lab.endpoint, "--token-file", str(tok), "profile",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "compute.host.nic.down" in text and "fenced yes" in text
    table = text.split("per stage")[1]
    for stage in ("fenced", "marked_down", "servers_updated", "published", "received"):
        assert stage in table
    assert "total" in table and "%" in table

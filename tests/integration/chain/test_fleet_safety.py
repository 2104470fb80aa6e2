"""A system that powers machines off must never power off a healthy one (DESIGN principle 9), with real parts:
hosts in network namespaces, agents as processes, virtual BMCs counting the power-offs they receive.

Every test asserts the BMCs' own power-off counts, not log lines.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.lab.cloud import Lab, wait_for
from tests.integration.chain.conftest import liveness_changes, still

P = fault_pb2.IncidentPhase
SUSPECTED, HELD, FENCED = P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_HELD, P.INCIDENT_PHASE_FENCED
MARKED_DOWN, UNFENCED, WITHDRAWN = P.INCIDENT_PHASE_MARKED_DOWN, P.INCIDENT_PHASE_UNFENCED, P.INCIDENT_PHASE_WITHDRAWN
HOSTS = [f"compute-{i}" for i in range(1, 7)]


def power_offs(lab: Lab) -> dict[str, int]:
    return {h: lab.power(h)[1] for h in lab.hosts}


def host_phases(consumer, host: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The phases the consumer heard for ``host``'s servers, in order."""
    return [n.phase for n in consumer.faults
            if any(v.physical_resource_id == host for v in n.virtual_resource_info)]


def roots(admin, fault_type: str) -> list[fault_pb2.FaultNotification]:  # type: ignore[no-untyped-def]
    return [n for n in admin.faults for p in n.physical_resource_info for f in p.faults if f.fault_type == fault_type]


async def doctorctl(lab: Lab, tmp_path: Path, *args: str) -> str:
    tok = tmp_path / "admin.token"
    tok.write_text(lab.tokens["admin"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "doctor_common.ctl", "--endpoint", lab.endpoint, "--token-file", str(tok), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_every_agent_silenced_at_once_powers_nothing_off(make_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """All six agents fall silent together (what the inspector sees when its own network fails): no host is
    fenced; administrators get one critical root-cause alarm naming every host as a correlated fault; owners
    hear at once that their hosts are UNKNOWN (suspected, then held); when the agents return every suspicion is
    withdrawn and nothing is fenced afterwards either."""
    lab = await make_lab(hosts=6, servers_per_host=1, projects=("project-a",))
    admin = await make_lab.consumer(lab, "admin")
    owner = await make_lab.consumer(lab, "project-a")
    for h in HOSTS:
        lab.freeze_agent(h)
    try:
        await wait_for(lambda: all(HELD in host_phases(owner, h) for h in HOSTS), 10, what="every host held")
        [raised, *_] = roots(admin, "doctor.inspector.isolated")
        root = raised.physical_resource_info[0]
        assert root.physical_resource_id == "inspector" and root.faults[0].severity == common_pb2.SEVERITY_CRITICAL
        await wait_for(lambda: len(roots(admin, "doctor.inspector.isolated")[-1].physical_resource_info[0]
                                   .faults[0].correlated_fault_ids) == 6, 5, what="all six correlated")
        for h in HOSTS:
            first = next(n for n in owner.faults if any(v.physical_resource_id == h for v in n.virtual_resource_info))
            assert first.phase == SUSPECTED and not first.fenced
            assert first.virtual_resource_info[0].host_status == common_pb2.HOST_STATUS_UNKNOWN
        status = await admin.client.status()
        assert [c.cause for c in status.guard.causes] == ["fleet"] and status.guard.held == 6
        text = await doctorctl(lab, tmp_path, "status")
        assert "fleet guard: HOLDS" in text and "the inspector lost sight of 6 of 6 watched hosts" in text
        await still(lambda: power_offs(lab) == dict.fromkeys(HOSTS, 0), 1.0)
    finally:
        for h in HOSTS:
            lab.thaw_agent(h)
    await wait_for(lambda: all(WITHDRAWN in host_phases(owner, h) for h in HOSTS), 15, what="every suspicion withdrawn")
    await wait_for(lambda: roots(admin, "doctor.inspector.isolated")[-1].physical_resource_info[0].faults[0].state
                   == common_pb2.ALARM_STATE_CLEARED, 5, what="the root cause cleared")
    await still(lambda: power_offs(lab) == dict.fromkeys(HOSTS, 0), 1.5)
    assert all(FENCED not in host_phases(owner, h) for h in HOSTS)
    assert len(lab.inspector.alarms) == 0


async def test_a_racks_links_cut_together_blame_the_switch(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Every data link behind one top-of-rack switch goes down at once (the switch fails; the agents still reach
    the inspector over the management path): one switch alarm with the hosts' faults correlated, no power-off;
    links back, suspicions withdrawn."""
    lab = await make_lab(hosts=6, servers_per_host=1, projects=("project-a",), switch="tor-1")
    admin = await make_lab.consumer(lab, "admin")
    owner = await make_lab.consumer(lab, "project-a")
    for h in HOSTS:
        lab.cut_link(h)
    await wait_for(lambda: all(HELD in host_phases(owner, h) for h in HOSTS), 10, what="every host held")
    switch = roots(admin, "network.switch.down")
    assert switch and switch[0].physical_resource_info[0].physical_resource_id == "tor-1"
    assert {n.physical_resource_info[0].faults[0].fault_details.get("cause") for n in switch} == {"switch:tor-1"}
    await still(lambda: power_offs(lab) == dict.fromkeys(HOSTS, 0), 1.0)
    for h in HOSTS:
        lab.restore_link(h)
    await wait_for(lambda: all(WITHDRAWN in host_phases(owner, h) for h in HOSTS), 10, what="withdrawn")
    await still(lambda: power_offs(lab) == dict.fromkeys(HOSTS, 0), 1.0)


async def test_one_silent_host_among_healthy_ones_is_still_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """One frozen agent among six: nothing shared explains it, so it is fenced (once), the others are not."""
    lab = await make_lab(hosts=6, servers_per_host=1, projects=("project-a",))
    owner = await make_lab.consumer(lab, "project-a")
    lab.freeze_agent("compute-4")
    try:
        await wait_for(lambda: MARKED_DOWN in host_phases(owner, "compute-4"), 10, what="compute-4 fenced")
    finally:
        lab.thaw_agent("compute-4")
    assert host_phases(owner, "compute-4") == [SUSPECTED, FENCED, MARKED_DOWN]
    assert power_offs(lab) == {**dict.fromkeys(HOSTS, 0), "compute-4": 1}


async def test_an_inspector_that_lags_declares_nobody_unreachable(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The inspector's own loop is blocked for three liveness timeouts (a CPU hog in its loop): when it runs
    again, the heartbeats it could not read are not silence: no host is declared unreachable or fenced."""
    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a",))
    owner = await make_lab.consumer(lab, "project-a")
    changes = liveness_changes(lab)
    blocked = asyncio.Event()

    def hog() -> None:
        time.sleep(3 * lab.liveness_timeout_ms / 1000)
        blocked.set()
    asyncio.get_running_loop().call_soon(hog)
    await blocked.wait()
    await still(lambda: not changes and not owner.faults, 1.5)
    assert power_offs(lab) == {h: 0 for h in lab.hosts}
    assert lab.inspector.lag.worst_s >= lab.liveness_timeout_ms / 1000


async def test_a_dead_bmc_is_retried_until_the_host_is_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The BMC does not answer when the link fails: owners hear the host is not fenced, and why; fencing is
    retried with backoff, and once the BMC answers again the host is fenced, marked down and they are told."""
    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a",),
                         fencing_timeout_s=0.5, extra_config="retry_first_s = 0.2\nretry_max_s = 0.5\n")
    owner = await make_lab.consumer(lab, "project-a")
    lab.freeze_bmc("compute-2")
    try:
        lab.cut_link("compute-2")
        await wait_for(lambda: UNFENCED in host_phases(owner, "compute-2"), 10, what="the unfenced notice")
        n = next(n for n in owner.faults if n.phase == UNFENCED)
        assert not n.fenced and "did not" in n.fencing_error
        inc = lab.inspector.alarms.incident("compute-2")
        assert inc is not None
        await wait_for(lambda: int(inc.fault.fault_details.get("fence_attempts", "0")) >= 3, 10,
                       what="a few attempts failing while the BMC stays dead")
    finally:
        lab.thaw_bmc("compute-2")
    await wait_for(lambda: MARKED_DOWN in host_phases(owner, "compute-2"), 15, what="fenced once the BMC answers")
    assert host_phases(owner, "compute-2")[-2:] == [FENCED, MARKED_DOWN]
    assert lab.power("compute-2")[0] == "off"
    attempts = int(owner.faults[-1].virtual_resource_info[0].faults[0].fault_details.get("fence_attempts", "0"))
    assert attempts == 0 or attempts >= 2  # the final notice drops it; the unfenced ones counted


async def test_a_host_whose_agent_stopped_is_still_watched(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The agent is stopped (an orderly Goodbye), then the host loses power: its BMC says so, and the inspector
    notices without an agent — marked down (already off: no power-off sent) and its owners told."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    lab.inspector.absent.poll_s = 0.1
    owner = await make_lab.consumer(lab, "project-a")
    await lab.stop_agent("compute-1")
    await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].liveness == "stopped", 10, what="stopped")
    lab.lose_power("compute-1")
    await wait_for(lambda: MARKED_DOWN in host_phases(owner, "compute-1"), 10, what="the power loss noticed")
    n = owner.faults[-1]
    assert n.virtual_resource_info[0].faults[0].fault_type == "compute.host.power.off" and n.fenced
    assert lab.power("compute-1") == ("off", 0), "already off: nothing was sent"


async def test_a_switch_reported_down_by_its_monitor_holds_its_hosts(make_lab) -> None:  # type: ignore[no-untyped-def]
    """A network monitor reports the top-of-rack switch down (the seeds' JSON event, the switch as hostname):
    administrators get the switch's alarm at once; a host behind it that then loses its link is held, not
    fenced; the monitor reports the switch up and the link is back: the suspicion is withdrawn, the alarm
    cleared. A host token cannot speak for the switch."""
    import grpc

    from doctor_common.api import agent_pb2, agent_pb2_grpc
    from doctor_common.grpcutil import auth_metadata

    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a",), switch="tor-1",
                         extra_config='[[auth.agents]]\nhost = "tor-1"\ntoken = "switch-monitor-token"\n')
    admin = await make_lab.consumer(lab, "admin")
    owner = await make_lab.consumer(lab, "project-a")

    async def report(status: str, token: str = "switch-monitor-token") -> None:
        event = ('{"event": {"time": "2026-12-03T05:00:00Z", "type": "network.switch.down", "details": '
                 f'{{"hostname": "tor-1", "source": "netmon", "cause": "all ports down", "status": "{status}"}}}}}}')
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            await agent_pb2_grpc.AgentGatewayStub(ch).ReportJson(agent_pb2.JsonEventReport(json=event),
                                                                 metadata=auth_metadata(token))

    try:
        await report("down", lab.hosts["compute-1"].agent_token)
        raise AssertionError("a host's token reported for the switch")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
    await report("down")
    await wait_for(lambda: roots(admin, "network.switch.down"), 5, what="the switch's alarm")
    lab.cut_link("compute-2")
    await wait_for(lambda: HELD in host_phases(owner, "compute-2"), 10, what="held under the switch")
    await still(lambda: power_offs(lab) == {h: 0 for h in lab.hosts}, 1.0)
    lab.restore_link("compute-2")
    await report("up")
    await wait_for(lambda: WITHDRAWN in host_phases(owner, "compute-2"), 10, what="withdrawn")
    await wait_for(lambda: roots(admin, "network.switch.down")[-1].physical_resource_info[0].faults[0].state
                   == common_pb2.ALARM_STATE_CLEARED, 5, what="the switch's alarm cleared")
    assert power_offs(lab) == {h: 0 for h in lab.hosts}

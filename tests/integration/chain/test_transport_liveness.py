"""Silence found by the transport, not by heartbeats (issue 14, item 1; docs/agent.md, "Liveness").

Agents speak TCP to the inspector over their own veth (``Lab(agents_over_link=True)``) and send a heartbeat
only every 3 s, while the liveness timeout is 1 s: the heartbeats alone could not notice silence before 7.5 s
(2.5 intervals). The server's keepalive (a ping every 500 ms, half the timeout, answered in gRPC's core) ends a connection that
nobody answers, and the kernel's TCP state of that connection tells a silent peer from an agent that died on a
live host. Each test counts the BMC's power-offs.
"""

from __future__ import annotations

import time

import grpc

from controller_adapter.base import HostStatus
from doctor_common.api import agent_pb2, agent_pb2_grpc, fault_pb2
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import wait_for
from tests.integration.chain.conftest import liveness_changes, still


def host_phases(consumer, host: str) -> list[int]:  # type: ignore[no-untyped-def]
    return [n.phase for n in consumer.faults
            if any(v.physical_resource_id == host for v in n.virtual_resource_info)]

P = fault_pb2.IncidentPhase
SUSPECTED, HELD, FENCED, MARKED_DOWN = (P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_HELD, P.INCIDENT_PHASE_FENCED,
                                        P.INCIDENT_PHASE_MARKED_DOWN)
RARE = dict(agents_over_link=True, heartbeat_interval_ms=3000, liveness_timeout_ms=1000)


async def test_a_cut_link_is_found_by_the_transport_and_fenced_once(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1's link is cut: its connection goes unanswered, the host is unreachable within the timeout plus
    a keepalive interval or so — long before a heartbeat could tell — then fenced (one power-off) and marked
    down; its neighbour is untouched."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), **RARE)
    owner = await make_lab.consumer(lab, "project-a")
    rec = lab.inspector.liveness.hosts["compute-1"]
    assert rec.peer.startswith("ipv4:169.254.1.2:"), rec.peer
    cut = time.monotonic()
    lab.silence_host("compute-1")
    await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].liveness == "unreachable", 10, 0.005,
                   "compute-1 declared unreachable")
    found = time.monotonic() - cut
    assert found < 4.0, f"found after {found:.2f}s: not by the transport (heartbeats would take 7.5 s)"
    await wait_for(lambda: owner.of_phase(MARKED_DOWN), 15, what="the owner's marked-down notice")
    assert owner.of_phase(SUSPECTED)[0].virtual_resource_info[0].faults[0].fault_type == "compute.host.unreachable"
    assert lab.power("compute-1") == ("off", 1)
    assert lab.power("compute-2") == ("on", 0)
    assert lab.inspector.liveness.hosts["compute-2"].liveness == "up"
    assert (await lab.inspector.controller.get_host("compute-1")).status == HostStatus.DOWN


async def test_an_agent_killed_on_a_live_host_is_agent_death_not_silence(make_lab) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL of compute-1's agent: its host's kernel closes the connection, so the host is alive — an agent
    alarm for the administrator, no power-off, the host not marked down."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), **RARE)
    admin = await make_lab.consumer(lab, "admin")
    await lab.kill_agent("compute-1")
    await wait_for(lambda: admin.faults, 10, what="the agent alarm")
    assert admin.faults[0].physical_resource_info[0].faults[0].fault_type == "compute.host.agent.down"
    assert lab.inspector.liveness.hosts["compute-1"].liveness == "agent_down"
    assert lab.power("compute-1") == ("on", 0)
    assert not (await lab.inspector.controller.get_host("compute-1")).forced_down


async def test_a_frozen_agent_whose_kernel_answers_is_not_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1's agent is frozen (SIGSTOP) while its host's kernel still answers: the keepalive ends the
    connection, the kernel acknowledges the close, and that is an agent's death — never a power-off."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), **RARE)
    admin = await make_lab.consumer(lab, "admin")
    lab.freeze_agent("compute-1")
    try:
        await wait_for(lambda: admin.faults, 10, what="the agent alarm")
        assert admin.faults[0].physical_resource_info[0].faults[0].fault_type == "compute.host.agent.down"
        assert lab.inspector.liveness.hosts["compute-1"].liveness == "agent_down"
        assert lab.power("compute-1") == ("on", 0)
    finally:
        lab.thaw_agent("compute-1")
    # thawed, it reconnects and clears its alarm
    await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].liveness == "up", 15, what="reconnection")
    assert lab.power("compute-1") == ("on", 0)


async def test_healthy_agents_between_rare_heartbeats_are_never_declared(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Over two heartbeat intervals (6 s, six liveness timeouts) no healthy host is declared anything: the
    transport vouches for them between heartbeats."""
    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a",), **RARE)
    admin = await make_lab.consumer(lab, "admin")
    changes = liveness_changes(lab)
    await still(lambda: changes == [] and admin.faults == [], 6.0)
    assert all(lab.power(h) == ("on", 0) for h in lab.hosts)


async def test_every_link_cut_together_is_found_by_the_transport_and_fences_nothing(make_lab) -> None:  # type: ignore[no-untyped-def]
    """The transport's silence goes through the fleet guard like any other: all three hosts' links cut at once
    (the inspector's own network, a switch) — each found silent by its connection, every one held, 0 power-offs;
    links back, every suspicion withdrawn and still nothing powered off."""
    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a",), **RARE)
    owner = await make_lab.consumer(lab, "project-a")
    changes = liveness_changes(lab)
    for h in lab.hosts:
        lab.silence_host(h)
    try:
        await wait_for(lambda: {h for h, new in changes if new == "unreachable"} == set(lab.hosts), 10,
                       what="every host found silent by the transport")
        await wait_for(lambda: all(HELD in host_phases(owner, h) for h in lab.hosts), 10, what="every host held")
        await still(lambda: all(lab.power(h) == ("on", 0) for h in lab.hosts), 2.0)
    finally:
        for h in lab.hosts:
            lab.unsilence_host(h)
    await wait_for(lambda: all(lab.inspector.liveness.hosts[h].liveness == "up" for h in lab.hosts), 20,
                   what="every agent back")
    await still(lambda: all(lab.power(h) == ("on", 0) for h in lab.hosts), 1.5)
    assert all(FENCED not in host_phases(owner, h) for h in lab.hosts)


async def test_a_stream_held_open_in_silence_while_its_kernel_answers_is_never_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1's agent is replaced by one that sends its Hello and then nothing, its gRPC stack answering every
    ping: to the inspector, a stalled agent looks the same as a stream it is behind reading (seen at 10,000
    agents, bench/scale.py). Past the silence limit the open connection's kernel answers, so the host is alive:
    an agent alarm for administrators, 0 power-offs, however long it lasts; its connection then closed by the
    peer changes nothing."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    admin = await make_lab.consumer(lab, "admin")
    await lab.kill_agent("compute-1")
    rec = lambda: lab.inspector.liveness.hosts["compute-1"]  # noqa: E731
    await wait_for(lambda: rec().liveness == "agent_down", 10, what="the real agent gone")
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="compute-1", boot_id="mute")))
        assert (await call.read()).WhichOneof("kind") == "config"
        await wait_for(lambda: rec().liveness == "up", 10, what="the mute agent in")
        limit = lab.inspector.liveness.silence_limit_s
        await wait_for(lambda: rec().liveness == "agent_down", limit + 5, what="its silence judged by its kernel")
        assert rec().connected
        stalled = lambda: [f for n in admin.faults for p in n.physical_resource_info for f in p.faults  # noqa: E731
                           if "agent stalled, host alive" in f.probable_cause]
        await wait_for(stalled, 5, what="the agent alarm")
        assert stalled()[0].fault_type == "compute.host.agent.down"
        await still(lambda: rec().liveness == "agent_down" and lab.power("compute-1") == ("on", 0), 4 * limit)
        call.cancel()
    await still(lambda: rec().liveness == "agent_down" and lab.power("compute-1") == ("on", 0), 2 * limit)
    assert lab.power("compute-2") == ("on", 0)


def stall_the_inspector(seconds: float) -> None:
    """The inspector runs on this test's event loop: blocking it is the inspector's own stall (a GC pause, an
    overload) — the behaviour under test, not a wait."""
    time.sleep(seconds)


async def test_a_host_silent_through_an_inspector_stall_is_found_once_it_is_on_time(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1 vanishes and the inspector's loop stalls past the keepalive's close: the close is read while the
    inspector is behind, so its evidence is not trusted as it stands. Once on time, a retransmission of ours
    going unanswered again decides — unreachable and fenced once, before the silence limit (7.5 s of
    heartbeats, plus the stall) would have."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), **RARE)
    cut = time.monotonic()
    lab.silence_host("compute-1")
    stall_the_inspector(1.3)  # keepalive 0.5 s + ping timeout 0.5 s: the connection ends during the stall
    await wait_for(lambda: lab.inspector.liveness.hosts["compute-1"].liveness == "unreachable", 15, 0.005,
                   "compute-1 declared unreachable")
    found = time.monotonic() - cut
    assert found < 7.0, f"found after {found:.2f}s: by the silence limit, not by the second look"
    await wait_for(lambda: lab.power("compute-1") == ("off", 1), 15, what="compute-1 fenced")
    assert lab.power("compute-2") == ("on", 0)


async def test_a_host_back_right_after_an_inspector_stall_is_never_fenced(make_lab) -> None:  # type: ignore[no-untyped-def]
    """compute-1 goes silent during the inspector's stall and is back as it ends: what the kernel gathered
    meanwhile (our retransmissions unanswered) is the only evidence of silence, and it is the stall's. The
    second look sees the host answer (or its agent back first): no power-off, never unreachable."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), **RARE)
    changes = liveness_changes(lab)
    rec = lab.inspector.liveness.hosts["compute-1"]
    first = rec.stream
    lab.silence_host("compute-1")
    stall_the_inspector(1.3)  # the connection ends unanswered during the stall
    lab.unsilence_host("compute-1")
    await wait_for(lambda: rec.stream is not None and rec.stream is not first and rec.liveness == "up"
                   and rec.closed_stream is None, 20, 0.01, "compute-1 back on a new stream, its old one judged")
    assert ("compute-1", "unreachable") not in changes, changes
    assert lab.power("compute-1") == ("on", 0) and lab.power("compute-2") == ("on", 0)

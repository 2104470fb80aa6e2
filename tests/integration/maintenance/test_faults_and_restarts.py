"""Maintenance meets the fault chain and restarts: a fault during a session is handled as anywhere and rolls
the session back; a host in maintenance is never fenced for what the work does to it, and is not returned to
service while its agent reports a fault; a restarted standalone inspector carries a session on."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from controller_adapter.base import HostStatus
from doctor_common.api import fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.lab.cloud import wait_for
from inspector.config import load_inspector_config
from inspector.core import Inspector
from tests.integration.maintenance.conftest import Progress

S = mpb.SessionState


async def test_a_fault_during_a_session_is_fenced_as_anywhere_and_rolls_it_back(site: Any, needs_root: None) -> None:
    """compute-1 is in a session, its owners not yet answered, when its link goes: the fault chain fences it
    (one power-off), its owners hear the fault, and the session rolls back saying why."""
    lab = await site(agents=True, hosts=3, servers_per_host=2)
    a = await site.owner(lab, "project-a")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"], reply_timeout_s=60))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)

    lab.cut_link("compute-1")
    done = await progress.end()
    assert done.state == S.SESSION_STATE_ROLLED_BACK and "compute-1" in done.detail and "fault chain" in done.detail
    await wait_for(lambda: lab.power("compute-1") == ("off", 1), 10, 0.01, "compute-1 fenced")
    await wait_for(lambda: any(n.phase == fault_pb2.INCIDENT_PHASE_MARKED_DOWN for n in a.faults), 10, 0.01,
                   "project-a to hear compute-1 marked down")
    assert (await lab.inspector.controller.get_host("compute-1")).status is HostStatus.DOWN
    assert all(lab.power(h) == ("on", 0) for h in ("compute-2", "compute-3"))


async def test_a_host_in_maintenance_is_not_fenced_nor_returned_to_service_while_broken(
        site: Any, needs_root: None) -> None:
    """compute-1 is emptied and in maintenance; the work takes its link down: administrators hear of it, nothing
    is powered off, the owners whose servers left hear nothing. Ending the maintenance is refused while the
    agent reports the NIC down, and accepted once it is back; the owners are told."""
    lab = await site(agents=True, hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    admin_view = await site.owner(lab, "admin")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"]))
    sid = await progress.first()
    for owner, server in ((a, "vm-1-1"), (b, "vm-1-2")):
        await owner.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
        await owner.client.reply(sid, {server: mpb.INSTRUCTION_LIVE_MIGRATE})
    assert (await progress.end()).state == S.SESSION_STATE_IN_MAINTENANCE
    faults_before = len(a.faults) + len(b.faults)

    lab.cut_link("compute-1")
    await wait_for(lambda: any(p.physical_resource_id == "compute-1" for n in admin_view.faults
                               for p in n.physical_resource_info), 10, 0.01, "administrators to hear of it")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        [m async for m in site.admin(lab).maintenance_end(["compute-1"])]
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "compute-1: its agent reports" in (refused.value.details() or "")
    assert lab.power("compute-1") == ("on", 0), "a host in maintenance is never fenced for the work's symptoms"
    assert len(a.faults) + len(b.faults) == faults_before, "nothing of theirs is on it any more"

    lab.restore_link("compute-1")

    async def ended() -> bool:
        try:
            events = [m async for m in site.admin(lab).maintenance_end(["compute-1"])]
        except grpc.aio.AioRpcError:
            return False  # the agent has not reported the link back yet
        return events[-1].session.state == S.SESSION_STATE_COMPLETED
    await wait_for(ended, 10, 0.1, "the end to be accepted once the link is back")
    assert (await lab.inspector.controller.get_host("compute-1")).status is HostStatus.UP
    await a.notice(sid, S.SESSION_STATE_COMPLETED)
    assert lab.power("compute-1") == ("on", 0)


async def test_a_restarted_standalone_inspector_carries_the_session_on(site: Any) -> None:
    """The inspector stops while owners are being asked; a new one starts from the same files: the session is
    there, still asking (its notice not sent again), takes the replies and finishes."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"], reply_timeout_s=60))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)

    await lab.inspector.stop(0.2)
    lab.inspector = Inspector(load_inspector_config(lab.dir / "inspector.toml"))
    await lab.inspector.start()

    async def resumed() -> bool:
        try:
            await a.client.reply(sid, {"vm-1-1": mpb.INSTRUCTION_MIGRATE})
            return True
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # the new process is still starting
            return False
    await wait_for(resumed, 10, 0.05, "the restarted inspector to take replies")
    await b.client.reply(sid, {"vm-1-2": mpb.INSTRUCTION_MIGRATE})
    watched = [m async for m in site.admin(lab).maintenance_watch(sid)]
    assert watched[-1].session.state == S.SESSION_STATE_IN_MAINTENANCE
    await a.notice(sid, S.SESSION_STATE_IN_MAINTENANCE)
    assert a.states(sid) == [S.SESSION_STATE_OWNERS_NOTIFIED, S.SESSION_STATE_IN_MAINTENANCE], "each notice once"
    assert await lab.inspector.controller.host_is_empty("compute-1")


async def test_a_host_still_being_emptied_counts_in_the_fleet_guard(site: Any, needs_root: None) -> None:
    """compute-1 is in a session (disabled, its servers still on it, owners not answered) when every agent falls
    silent at once: the fleet guard counts it with the others, so none is fenced — not even the disabled one —
    and its session rolls back, the fault chain holding its incident."""
    lab = await site(agents=True, hosts=6, servers_per_host=1)
    a = await site.owner(lab, "project-a")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"], reply_timeout_s=120))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    hosts = list(lab.hosts)
    for h in hosts:
        lab.freeze_agent(h)
    try:
        done = await progress.end(timeout=15)
        assert done.state == S.SESSION_STATE_ROLLED_BACK and "compute-1" in done.detail
        await wait_for(lambda: lab.inspector.guard_status().held == 6, 10, 0.05, "all six held")
        assert all(lab.power(h) == ("on", 0) for h in hosts), "nobody powered off, the disabled host included"
    finally:
        for h in hosts:
            lab.thaw_agent(h)

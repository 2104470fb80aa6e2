"""Maintenance sessions end to end against a real inspector, its embedded controller and virtual BMCs:
consent, emptying, rollback (issue 13). Servers are placed round robin: on compute-1, vm-1-1 is
project-a's and vm-1-2 project-b's."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from controller_adapter.base import HostStatus, ServerState
from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for
from inspector.response.durable import NullDurable
from tests.integration.maintenance.conftest import Progress

S = mpb.SessionState
MIGRATE, LIVE, OWN, NACK, LEAVE = (mpb.INSTRUCTION_MIGRATE, mpb.INSTRUCTION_LIVE_MIGRATE,
                                   mpb.INSTRUCTION_OWN_ACTION, mpb.INSTRUCTION_NACK, mpb.INSTRUCTION_LEAVE)
HAPPY = [S.SESSION_STATE_ACCEPTED, S.SESSION_STATE_HOSTS_DISABLED, S.SESSION_STATE_OWNERS_NOTIFIED,
         S.SESSION_STATE_REPLIES_RECEIVED, S.SESSION_STATE_INSTRUCTIONS_EXECUTED, S.SESSION_STATE_HOSTS_EMPTY,
         S.SESSION_STATE_IN_MAINTENANCE]


async def where(lab: Lab, server: str) -> str:
    return (await lab.inspector.controller.server_host_status(server))[0]


async def host(lab: Lab, name: str) -> Any:
    return await lab.inspector.controller.get_host(name)


async def test_owners_consent_the_host_is_emptied_and_returned_to_service(site: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Each owner is told of its own server only, with the deadline and the instructions allowed; both answer;
    the servers are moved to other enabled hosts; the administrator's stream walks every step to IN_MAINTENANCE;
    nothing is powered off. Ending it enables the host again and tells the owners. Each act is on the audit
    trail with the name of whoever did it."""
    caplog.set_level(logging.INFO, logger="doctor.audit")
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"], reason="BIOS 2.1",
                                                          metadata={"work": "bios"}))
    sid = await progress.first()

    asked_a = await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    asked_b = await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    assert [v.virtual_resource_id for v in asked_a.virtual_resource_info] == ["vm-1-1"]
    assert [o.server_id for o in asked_a.servers] == ["vm-1-1"], "nobody else's servers"
    assert [v.virtual_resource_id for v in asked_b.virtual_resource_info] == ["vm-1-2"]
    assert asked_a.virtual_resource_info[0].virtual_resource_state == "maintenance"
    assert asked_a.virtual_resource_info[0].host_status == common_pb2.HOST_STATUS_MAINTENANCE
    assert asked_a.reply_deadline_unix_nanos > 0 and NACK in asked_a.allowed and asked_a.reason == "BIOS 2.1"
    assert (await host(lab, "compute-1")).status is HostStatus.MAINTENANCE, "no new placements meanwhile"

    ack = await a.client.reply(sid, {"vm-1-1": (LIVE, "compute-3")})
    assert ack.state == S.SESSION_STATE_OWNERS_NOTIFIED, "still waiting for project-b"
    await b.client.reply(sid, {"vm-1-2": MIGRATE})
    done = await progress.end()

    assert done.state == S.SESSION_STATE_IN_MAINTENANCE and progress.states() == HAPPY
    assert await where(lab, "vm-1-1") == "compute-3" and await where(lab, "vm-1-2") in ("compute-2", "compute-3")
    assert await lab.inspector.controller.host_is_empty("compute-1")
    assert {o.server_id: (o.from_host, o.done) for o in done.servers} == {
        "vm-1-1": ("compute-1", True), "vm-1-2": ("compute-1", True)}
    told = await a.notice(sid, S.SESSION_STATE_IN_MAINTENANCE)
    assert told.servers[0].host == "compute-3", "the owner hears where its server went"
    q = await site.admin(lab).maintenance_query(["compute-1"])
    info = q.physical_resource_info[0]
    assert (info.physical_resource_state, info.session.session_id, info.metadata["work"]) == (
        "maintenance", sid, "bios")

    with pytest.raises(grpc.aio.AioRpcError) as refused:  # no agent here: nothing says the host is fit
        [m async for m in site.admin(lab).maintenance_end(["compute-1"])]
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "compute-1: its agent is not connected" in (refused.value.details() or "")
    ended = [m async for m in site.admin(lab).maintenance_end(["compute-1"], force=True)]
    assert ended[-1].session.state == S.SESSION_STATE_COMPLETED
    assert (await host(lab, "compute-1")).status is HostStatus.UP
    await a.notice(sid, S.SESSION_STATE_COMPLETED)
    await b.notice(sid, S.SESSION_STATE_COMPLETED)
    assert all(lab.power(h)[1] == 0 for h in lab.hosts), "maintenance never powers anything off"
    assert a.sequences == sorted(set(a.sequences)), "each notice once, in order"
    acts = [(f["action"], f["principal"], f["target"], f["outcome"]) for f in
            (getattr(r, "fields", {}) for r in caplog.records) if f.get("event") == "operator"]
    assert acts == [("maintenance_start", "admin", "compute-1", "accepted"),
                    ("maintenance_reply", "project-a", sid, "accepted"),
                    ("maintenance_reply", "project-b", sid, "accepted"),
                    ("maintenance_end", "admin", "compute-1", "refused"),
                    ("maintenance_end_forced", "admin", "compute-1", "accepted")], acts


async def test_a_nack_rolls_it_back_and_nothing_moves(site: Any) -> None:
    """project-a agrees, project-b refuses: the session rolls back before any move, the host is enabled again
    and both owners are told it is cancelled, with the NACK's reason for the administrator."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"]))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await a.client.reply(sid, {"vm-1-1": MIGRATE})
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await b.client.reply(sid, nack=True, reason="active member, no standby yet")
    done = await progress.end()

    assert done.state == S.SESSION_STATE_ROLLED_BACK
    assert "NACK from project-b (active member, no standby yet)" in done.detail
    assert S.SESSION_STATE_REPLIES_RECEIVED not in progress.states()
    assert await where(lab, "vm-1-1") == "compute-1" and await where(lab, "vm-1-2") == "compute-1"
    assert (await host(lab, "compute-1")).status is HostStatus.UP
    assert (await a.notice(sid, S.SESSION_STATE_ROLLED_BACK)).virtual_resource_info[0].virtual_resource_state \
        == "normal"
    await b.notice(sid, S.SESSION_STATE_ROLLED_BACK)


async def test_an_owner_who_never_answers_rolls_it_back_at_the_deadline(site: Any) -> None:
    """project-b never answers: at the reply deadline the session rolls back, naming who did not answer."""
    lab = await site(hosts=3, servers_per_host=2)
    a = await site.owner(lab, "project-a")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"], reply_timeout_s=1))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await a.client.reply(sid, {"vm-1-1": MIGRATE})
    done = await progress.end()
    assert done.state == S.SESSION_STATE_ROLLED_BACK and "no reply by the deadline from project-b" in done.detail
    assert (await host(lab, "compute-1")).status is HostStatus.UP
    await a.notice(sid, S.SESSION_STATE_ROLLED_BACK)


async def test_a_failed_migration_rolls_back_and_says_where_servers_are(site: Any) -> None:
    """compute-3 is in a session of its own (disabled), so vm-1-2's move there fails; vm-1-1 moved to compute-2
    before that. The session rolls back; the report says vm-1-1 is on compute-2 now, and vm-1-2 why not."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    other = Progress(site.admin(lab).maintenance_start(["compute-3"]))
    await other.first()
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"]))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await a.client.reply(sid, {"vm-1-1": (MIGRATE, "compute-2")})
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a target in maintenance itself is refused at once ...
        await b.client.reply(sid, {"vm-1-2": (MIGRATE, "compute-1")})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await b.client.reply(sid, {"vm-1-2": (MIGRATE, "compute-3")})  # ... one disabled meanwhile fails on the move
    done = await progress.end()

    assert done.state == S.SESSION_STATE_ROLLED_BACK and "vm-1-2" in done.detail
    outcome = {o.server_id: o for o in done.servers}
    assert await where(lab, "vm-1-1") == "compute-2" and outcome["vm-1-1"].host == "compute-2"
    assert outcome["vm-1-1"].done and not outcome["vm-1-2"].done and outcome["vm-1-2"].error
    assert await where(lab, "vm-1-2") == "compute-1"
    assert (await host(lab, "compute-1")).status is HostStatus.UP
    told = await a.notice(sid, S.SESSION_STATE_ROLLED_BACK)
    assert told.servers[0].host == "compute-2", "the owner hears where its server is now"


async def test_one_session_per_host_and_requests_checked(site: Any) -> None:
    """A second session on a host is refused; so are unknown hosts, a consumer asking for maintenance, replies
    for someone else's server or leaving a server out, and a reply to a session not waiting for replies."""
    lab = await site(hosts=2, servers_per_host=2)
    a = await site.owner(lab, "project-a")
    admin = site.admin(lab)
    progress = Progress(admin.maintenance_start(["compute-1"]))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)

    async def code(stream_or_call: Any) -> grpc.StatusCode:
        try:
            if hasattr(stream_or_call, "__aiter__"):
                async for _ in stream_or_call:
                    pass
            else:
                await stream_or_call
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        raise AssertionError("not refused")

    assert await code(admin.maintenance_start(["compute-1"])) == grpc.StatusCode.ALREADY_EXISTS
    assert await code(admin.maintenance_start(["nowhere"])) == grpc.StatusCode.NOT_FOUND
    assert await code(admin.maintenance_start([])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(a.client.maintenance_start(["compute-2"])) == grpc.StatusCode.PERMISSION_DENIED
    assert await code(a.client.reply(sid, {"vm-1-2": MIGRATE})) == grpc.StatusCode.PERMISSION_DENIED
    assert await code(a.client.reply(sid, {})) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code(a.client.reply("no-such-session", {"vm-1-1": MIGRATE})) == grpc.StatusCode.NOT_FOUND
    async with DoctorClient(lab.endpoint, "not-a-token") as stranger:
        assert await code(stranger.reply(sid, nack=True)) == grpc.StatusCode.UNAUTHENTICATED
    still = (await admin.maintenance_query(["compute-1"])).physical_resource_info[0].session
    assert still.state == S.SESSION_STATE_OWNERS_NOTIFIED, "nothing refused changed the session"

    cancelled = [m async for m in admin.maintenance_end(["compute-1"])]  # ends it: a cancel, rolled back
    assert cancelled[-1].session.state == S.SESSION_STATE_ROLLED_BACK
    assert "cancelled by admin" in cancelled[-1].session.detail
    assert await code(a.client.reply(sid, {"vm-1-1": MIGRATE})) == grpc.StatusCode.FAILED_PRECONDITION
    assert (await progress.end()).state == S.SESSION_STATE_ROLLED_BACK


async def state_of(lab: Lab, server: str) -> ServerState:
    host_name = await where(lab, server)
    return next(s.state for s in await lab.inspector.controller.servers_on_host(host_name) if s.id == server)


async def test_a_server_left_shut_down_stays_and_is_started_again_at_the_end(site: Any) -> None:
    """project-a leaves vm-1-1 where it is (shut down for the work, started after); project-b's vm-1-2 moves.
    The host is in maintenance with only vm-1-1 on it, stopped; ending the maintenance starts it again."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"]))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await a.client.reply(sid, {"vm-1-1": LEAVE})
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await b.client.reply(sid, {"vm-1-2": MIGRATE})
    done = await progress.end()

    assert done.state == S.SESSION_STATE_IN_MAINTENANCE, done.detail
    assert [s.id for s in await lab.inspector.controller.servers_on_host("compute-1")] == ["vm-1-1"]
    assert await state_of(lab, "vm-1-1") is ServerState.STOPPED
    told = await a.notice(sid, S.SESSION_STATE_IN_MAINTENANCE)
    assert told.virtual_resource_info[0].virtual_resource_state == "maintenance" and told.servers[0].done

    ended = [m async for m in site.admin(lab).maintenance_end(["compute-1"], force=True)]
    assert ended[-1].session.state == S.SESSION_STATE_COMPLETED
    assert await state_of(lab, "vm-1-1") is ServerState.ACTIVE and await where(lab, "vm-1-1") == "compute-1"
    await a.notice(sid, S.SESSION_STATE_COMPLETED)


async def test_a_rollback_starts_again_a_server_left_shut_down(site: Any) -> None:
    """vm-1-1 is shut down as its owner asked; vm-1-2's move then fails (its target is in a session of its own):
    the rollback starts vm-1-1 again on compute-1."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    await Progress(site.admin(lab).maintenance_start(["compute-3"])).first()
    progress = Progress(site.admin(lab).maintenance_start(["compute-1"]))
    sid = await progress.first()
    await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await a.client.reply(sid, {"vm-1-1": LEAVE})
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    await b.client.reply(sid, {"vm-1-2": (MIGRATE, "compute-3")})
    done = await progress.end()
    assert done.state == S.SESSION_STATE_ROLLED_BACK and "vm-1-2" in done.detail
    assert {o.server_id: o.done for o in done.servers}["vm-1-1"], "it had been shut down"
    assert await state_of(lab, "vm-1-1") is ServerState.ACTIVE and await where(lab, "vm-1-1") == "compute-1"



async def test_state_query_names_versions_zone_and_filters(site: Any) -> None:
    """An agent's Hello carries its host's facts: StateQuery answers them as the seeds' PhysicalResourceInfo
    (firmware and hypervisor versions, kernel in metadata); the filter narrows by host, state and zone."""
    lab = await site(hosts=2, servers_per_host=1)
    admin = site.admin(lab)
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            host_id="compute-1", boot_id="b1", agent_version="t", facts={
                "firmware_version": "SeaBIOS 1.16.2", "hypervisor_version": "qemu 7.2.9, libvirt 9.0.0",
                "kernel": "6.1.0-28-amd64"})))

        async def reported() -> bool:
            q = await admin.maintenance_query(["compute-1"])
            return bool(q.physical_resource_info and q.physical_resource_info[0].firmware_version)
        await wait_for(reported, 10, 0.02, "compute-1's facts")
        one = (await admin.maintenance_query(["compute-1"])).physical_resource_info[0]
        assert (one.firmware_version, one.hypervisor_version, one.metadata["kernel"]) == (
            "SeaBIOS 1.16.2", "qemu 7.2.9, libvirt 9.0.0", "6.1.0-28-amd64")
        assert one.physical_resource_state == "normal" and one.host_status == common_pb2.HOST_STATUS_UP
        call.cancel()
    everyone = await admin.maintenance_query()
    assert [h.physical_resource_id for h in everyone.physical_resource_info] == ["compute-1", "compute-2"]
    assert not (await admin.maintenance_query(state="maintenance")).physical_resource_info
    assert not (await admin.maintenance_query(zone="nowhere")).physical_resource_info
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as consumer:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await consumer.maintenance_query()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_vm_retirement_moves_named_servers_with_their_owners_consent(site: Any) -> None:
    """Retiring vm-1-1 asks project-a only, disables no host, moves just that server and completes; project-b's
    vm-1-2 on the same host is untouched and its owner hears nothing. LEAVE is no way to retire a server."""
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).retire(["vm-1-1"], reason="DIMM predicted to fail"))
    sid = await progress.first()
    asked = await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    assert [v.virtual_resource_id for v in asked.virtual_resource_info] == ["vm-1-1"]
    assert LEAVE not in asked.allowed and asked.virtual_resource_info[0].host_status == common_pb2.HOST_STATUS_UP
    assert (await host(lab, "compute-1")).status is HostStatus.UP, "no host is disabled for a retirement"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.client.reply(sid, {"vm-1-1": LEAVE})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await a.client.reply(sid, {"vm-1-1": LIVE})
    done = await progress.end()

    assert done.state == S.SESSION_STATE_COMPLETED and done.retirement
    assert await where(lab, "vm-1-1") != "compute-1" and await where(lab, "vm-1-2") == "compute-1"
    await a.notice(sid, S.SESSION_STATE_COMPLETED)
    assert b.notices == [], "project-b owns nothing retired"
    assert (await host(lab, "compute-1")).status is HostStatus.UP


async def test_a_retirement_refused_by_its_owner_changes_nothing(site: Any) -> None:
    lab = await site(hosts=2, servers_per_host=2)
    b = await site.owner(lab, "project-b")
    progress = Progress(site.admin(lab).retire(["vm-1-2", "vm-2-2"]))
    sid = await progress.first()
    asked = await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    assert sorted(v.virtual_resource_id for v in asked.virtual_resource_info) == ["vm-1-2", "vm-2-2"]
    await b.client.reply(sid, nack=True, reason="no capacity for a standby")
    done = await progress.end()
    assert done.state == S.SESSION_STATE_ROLLED_BACK and "NACK from project-b" in done.detail
    assert await where(lab, "vm-1-2") == "compute-1" and await where(lab, "vm-2-2") == "compute-2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in site.admin(lab).retire(["ghost"])]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_maintenance_refused_without_state_that_outlives_the_process(site: Any) -> None:
    """A standalone inspector keeping nothing on disk would forget a session on restart and leave its hosts
    disabled: it refuses maintenance, saying what to configure."""
    lab = await site(hosts=2, servers_per_host=1)
    lab.inspector.maintenance.durable = NullDurable()  # what a standalone inspector without a state file has
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in site.admin(lab).maintenance_start(["compute-1"])]
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "[notifier] state" in (err.value.details() or "")
    assert (await host(lab, "compute-1")).status is HostStatus.UP

"""Moving servers and emptying hosts through Nova: live migration, evacuation, cold migration, host_is_empty."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from controller_adapter.base import BackendUnavailable, ControllerError, NotFound, ServerState, Unsupported
from controller_adapter.openstack import OpenStackController
from doctor_common.lab.cloud import wait_for
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import calls, of, seed

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]


def posts(cloud: FakeCloud) -> list[tuple[str, object, str | None]]:
    return [(c[1], c[3], c[4]) for c in calls(cloud) if c[0] == "POST"]


async def test_live_migration_to_a_host(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Live migration reads the server and the services, then posts os-migrateLive (2.30 form); the server and
    its ports move."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    await ctl.migrate_server("s1", "c2")
    srv_mv, svc_mv = ("2.52", "2.52") if compute_max == "2.52" else ("2.90", "2.69")
    assert calls(cloud) == [
        ("GET", "/compute/v2.1/servers/s1", {}, None, srv_mv),
        ("GET", "/compute/v2.1/os-services", {"binary": ["nova-compute"]}, None, svc_mv),
        ("POST", "/compute/v2.1/servers/s1/action", {}, {"os-migrateLive": {"host": "c2", "block_migration": "auto"}},
         "2.30"),
    ]
    assert cloud.server("s1").host == "c2" and cloud.port("port-1").host == "c2"
    assert "s1" in [s.id for s in await ctl.servers_on_host("c2")]


async def test_live_migration_lets_the_scheduler_choose(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Without a target the request carries host null and Nova's scheduler picks (here the empty c3)."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    await ctl.migrate_server("s1")
    assert posts(cloud) == [("/compute/v2.1/servers/s1/action",
                             {"os-migrateLive": {"host": None, "block_migration": "auto"}}, "2.30")]
    assert cloud.server("s1").host == "c3"


async def test_live_migration_on_an_old_cloud(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Below 2.25 the legacy body (block_migration/disk_over_commit booleans, no 'auto') is sent."""
    cloud = seed(make_cloud(compute_max="2.24"))
    ctl = await make_controller(cloud)
    await ctl.migrate_server("s1", "c2")
    assert posts(cloud) == [("/compute/v2.1/servers/s1/action", {"os-migrateLive": {
        "host": "c2", "block_migration": False, "disk_over_commit": False}}, "2.24")]
    assert cloud.server("s1").host == "c2"


async def test_forced_down_host_is_evacuated(compute_max: str, make_cloud: MakeCloud,
                                             make_controller: MakeController) -> None:
    """A server on a forced-down (fenced) host is evacuated, the only way off a dead host."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    await ctl.force_down("c1")
    cloud.clear_requests()
    await ctl.migrate_server("s1", "c2")
    await ctl.migrate_server("s2")
    srv_mv = "2.52" if compute_max == "2.52" else "2.90"
    assert posts(cloud) == [("/compute/v2.1/servers/s1/action", {"evacuate": {"host": "c2"}}, srv_mv),
                            ("/compute/v2.1/servers/s2/action", {"evacuate": {}}, srv_mv)]
    assert (cloud.server("s1").host, cloud.server("s2").host) == ("c2", "c3")
    assert cloud.server("s1").status == "ACTIVE"


async def test_unfenced_silent_host_is_not_evacuated(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A host that stopped reporting but is not forced down may still run the server: no move is sent."""
    cloud = seed(make_cloud())
    cloud.set_host_alive("c1", False)
    ctl = await make_controller(cloud)
    with pytest.raises(ControllerError, match="force it down"):
        await ctl.migrate_server("s1", "c2")
    assert posts(cloud) == [] and cloud.server("s1").host == "c1"


@pytest.mark.parametrize(("target", "why"), [("c1", "own host"), ("ghost", "unknown"), ("c3", "not usable")])
async def test_bad_target_is_refused_before_sending(target: str, why: str, make_cloud: MakeCloud,
                                                    make_controller: MakeController) -> None:
    """A target that cannot take the server is refused up front (Nova would fail some moves only asynchronously)."""
    cloud = seed(make_cloud())
    cloud.add_host("c3", disabled=True, disabled_reason="maintenance")
    ctl = await make_controller(cloud)
    with pytest.raises(ControllerError, match=why):
        await ctl.migrate_server("s1", target)
    assert posts(cloud) == []


async def test_no_usable_host(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """With no other usable host the move is refused without asking Nova's scheduler."""
    cloud = make_cloud()
    cloud.add_host("c1")
    cloud.add_host("c2", forced_down=True)
    cloud.add_server("s1", host="c1", project_id="p1")
    ctl = await make_controller(cloud)
    with pytest.raises(ControllerError, match="no valid host"):
        await ctl.migrate_server("s1")
    assert posts(cloud) == []


async def test_cold_migration(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """live=False posts migrate (with a host from 2.56; Unsupported with one below), then confirms the resize
    once Nova holds it in VERIFY_RESIZE, so the migration is over (the source host counts as empty)."""
    new = seed(make_cloud(compute_max="2.90"))
    ctl = await make_controller(new)
    await ctl.migrate_server("s1", "c2", live=False)
    assert posts(new) == [("/compute/v2.1/servers/s1/action", {"migrate": {"host": "c2"}}, "2.90"),
                          ("/compute/v2.1/servers/s1/action", {"confirmResize": None}, "2.90")]
    assert new.server("s1").host == "c2" and new.server("s1").status == "ACTIVE"
    assert [m.status for m in new.migrations()] == ["confirmed"], "not left waiting in VERIFY_RESIZE"

    old = seed(make_cloud(compute_max="2.52"))
    ctl = await make_controller(old)
    with pytest.raises(Unsupported, match="2.56"):
        await ctl.migrate_server("s1", "c2", live=False)
    await ctl.migrate_server("s1", live=False)
    assert posts(old) == [("/compute/v2.1/servers/s1/action", {"migrate": None}, "2.52"),
                          ("/compute/v2.1/servers/s1/action", {"confirmResize": None}, "2.52")]


async def test_evacuation_needs_2_14(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Below 2.14 evacuate needs onSharedStorage, which only the operator knows: Unsupported, nothing posted."""
    cloud = seed(make_cloud(compute_max="2.13"))
    ctl = await make_controller(cloud)
    await ctl.force_down("c1")
    with pytest.raises(Unsupported, match="2.14"):
        await ctl.migrate_server("s1")
    assert posts(cloud) == []


async def test_migrate_unknown_server(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Moving a server Nova does not know raises NotFound."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    with pytest.raises(NotFound):
        await ctl.migrate_server("ghost", "c2")


async def test_migration_post_is_never_retried(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A 503 on os-migrateLive is reported, not repeated (a second migration could be started)."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, retries=3)
    cloud.fail("POST", r"/servers/s1/action$", 503)
    with pytest.raises(BackendUnavailable) as info:
        await ctl.migrate_server("s1", "c2")
    assert info.value.status == 503
    assert len(of(cloud, "POST", "/compute/v2.1/servers/s1/action")) == 1


async def test_host_is_empty(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A host is empty with no servers and no unfinished migration from or to it; unknown hosts are NotFound."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    assert await ctl.host_is_empty("c1") is False
    assert await ctl.host_is_empty("c3") is True
    got = sorted((c[0], c[1], str(c[2]), c[3], c[4]) for c in calls(cloud) if "c3" in str(c[2]))
    assert got == [("GET", "/compute/v2.1/os-migrations", "{'host': ['c3']}", None, "2.80"),
                   ("GET", "/compute/v2.1/os-services", "{'binary': ['nova-compute'], 'host': ['c3']}", None, "2.69"),
                   ("GET", "/compute/v2.1/servers/detail", "{'host': ['c3'], 'all_tenants': ['True']}", None, "2.90")]
    cloud.add_migration("s4", "c2", "c3", status="pre-migrating")
    assert await ctl.host_is_empty("c3") is False
    cloud.complete_migrations()
    cloud.add_migration("s9", "c3", "c2", status="error")  # over: does not keep the host busy
    assert await ctl.host_is_empty("c2") is True
    with pytest.raises(NotFound):
        await ctl.host_is_empty("ghost")


async def test_host_empties_when_migrations_finish(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """While a live migration runs the server shows MIGRATING and its host is not empty; once done, it is."""
    cloud = seed(make_cloud(instant_migrations=False))
    ctl = await make_controller(cloud)
    await ctl.migrate_server("s4", "c3")
    assert [(s.id, s.state) for s in await ctl.servers_on_host("c2")] == [("s4", ServerState.MIGRATING)]
    assert await ctl.host_is_empty("c2") is False
    assert cloud.complete_migrations() == 1
    assert await ctl.host_is_empty("c2") is True
    assert [s.id for s in await ctl.servers_on_host("c3")] == ["s4"]


async def test_waiting_for_a_live_migration(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """With wait, the call returns once Nova's migration completed, and raises once Nova reports the migration
    it accepted as failed (the server stays on its host)."""
    cloud = seed(make_cloud(instant_migrations=False))
    ctl = await make_controller(cloud)
    moving = asyncio.create_task(ctl.migrate_server("s4", "c3", wait=True))
    await wait_for(lambda: any(m.status == "running" for m in cloud.migrations()), 5, 0.01, "Nova's migration")
    assert not moving.done(), "still waiting for Nova's migration"
    cloud.complete_migrations()
    await asyncio.wait_for(moving, 5)
    assert cloud.server("s4").host == "c3"

    failing = asyncio.create_task(ctl.migrate_server("s1", "c2", wait=True))
    await wait_for(lambda: any(m.server_id == "s1" and m.status == "running" for m in cloud.migrations()), 5, 0.01,
                   "s1's migration")
    assert cloud.fail_migrations() == 1
    with pytest.raises(ControllerError, match="failed: Nova's migration .* is error"):
        await asyncio.wait_for(failing, 5)
    assert cloud.server("s1").host == "c1"



async def test_an_unconfirmed_cold_migration_is_settled(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A cold migration whose caller stopped waiting (a leader that died after Nova finished it) holds its source
    host busy in VERIFY_RESIZE: settle_migrations confirms it, once, and the host is empty."""
    cloud = make_cloud(instant_migrations=False)
    cloud.add_host("c1")
    cloud.add_host("c2")
    cloud.add_server("s1", host="c1", project_id="p1")
    ctl = await make_controller(cloud)
    moving = asyncio.create_task(ctl.migrate_server("s1", "c2", live=False))
    await wait_for(lambda: bool(cloud.migrations()), 5, 0.01, "the migration to reach the cloud")
    moving.cancel()  # the caller goes away (its term ended) before Nova finishes
    await asyncio.gather(moving, return_exceptions=True)
    cloud.complete_migrations()  # Nova finishes: VERIFY_RESIZE, waiting for a confirmation nobody sends
    assert cloud.server("s1").status == "VERIFY_RESIZE" and await ctl.host_is_empty("c1") is False
    assert await ctl.settle_migrations("c1") == 1
    assert cloud.server("s1").status == "ACTIVE" and [m.status for m in cloud.migrations()] == ["confirmed"]
    assert await ctl.host_is_empty("c1") is True
    assert await ctl.settle_migrations("c1") == 0

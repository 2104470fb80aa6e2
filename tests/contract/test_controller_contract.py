"""One contract, two backends: the embedded controller and OpenStack (openstacksdk against a local cloud)
behave the same through the ``Controller`` interface."""

from __future__ import annotations

import pytest

from controller_adapter.base import (
    Controller,
    ControllerError,
    Host,
    HostStatus,
    NotFound,
    Port,
    Server,
    ServerState,
)
from tests.contract.conftest import Backend

S1 = Server("s1", "vnf-a", "c1", "p1", "u1")
S2 = Server("s2", "vnf-b", "c1", "p2", "u2")
S3 = Server("s3", "vnf-c", "c2", "p1", "u1")


async def status(b: Backend, host: str) -> HostStatus:
    return (await b.ctl.get_host(host)).status


async def test_is_a_controller(backend: Backend) -> None:
    """Each backend satisfies the Controller protocol and is named after its entry point."""
    assert isinstance(backend.ctl, Controller)
    assert backend.ctl.name == backend.name


async def test_hosts(backend: Backend) -> None:
    """Every host is listed, up, with its zone; an unknown host is NotFound."""
    hosts = await backend.ctl.list_hosts()
    assert [(h.name, h.zone, h.status) for h in hosts] == [
        ("c1", "az1", HostStatus.UP), ("c2", "az1", HostStatus.UP), ("c3", "az2", HostStatus.UP)]
    assert (await backend.ctl.get_host("c2")).name == "c2"
    with pytest.raises(NotFound):
        await backend.ctl.get_host("nowhere")


async def test_servers_with_owners(backend: Backend) -> None:
    """Servers on a host, of every project, carry their owner project and user; a project's list filters."""
    assert await backend.ctl.servers_on_host("c1") == [S1, S2]
    assert await backend.ctl.servers_on_host("c3") == []
    assert await backend.ctl.list_servers() == [S1, S2, S3]
    assert await backend.ctl.list_servers("p1") == [S1, S3]
    assert await backend.ctl.list_servers("nobody") == []


async def test_ports(backend: Backend) -> None:
    """Ports bound to a host, with owner and device, no data-plane status yet; every bound port at once."""
    assert await backend.ctl.ports_on_host("c1") == [Port("port-1", "c1", "p1", "s1"), Port("port-2", "c1", "p2", "s2")]
    assert await backend.ctl.ports_on_host("c3") == []
    assert [(p.id, p.host) for p in await backend.ctl.list_ports()] == [
        (p.id, p.host) for h in ("c1", "c2", "c3") for p in await backend.ctl.ports_on_host(h)]


async def test_force_down_and_up(backend: Backend) -> None:
    """Forcing a host down makes its servers' host status DOWN; forcing it up makes it UP again."""
    await backend.ctl.force_down("c1")
    assert (await backend.ctl.get_host("c1")).forced_down
    assert await backend.ctl.server_host_status("s1") == ("c1", HostStatus.DOWN)
    assert await backend.ctl.server_host_status("s3") == ("c2", HostStatus.UP)
    await backend.ctl.force_down("c1", False)
    assert await backend.ctl.server_host_status("s1") == ("c1", HostStatus.UP)
    assert not (await backend.ctl.get_host("c1")).forced_down


async def test_disable_is_maintenance(backend: Backend) -> None:
    """A disabled host (with its reason) is MAINTENANCE; enabled again, UP with no reason."""
    await backend.ctl.set_disabled("c2", True, "doctor: maintenance")
    host = await backend.ctl.get_host("c2")
    assert (host.disabled, host.disabled_reason, host.status) == (True, "doctor: maintenance", HostStatus.MAINTENANCE)
    assert await backend.ctl.server_host_status("s3") == ("c2", HostStatus.MAINTENANCE)
    await backend.ctl.set_disabled("c2", False)
    host = await backend.ctl.get_host("c2")
    assert (host.disabled, host.disabled_reason, host.status) == (False, "", HostStatus.UP)


async def test_forced_down_wins_over_disabled(backend: Backend) -> None:
    """As in Nova: forced down and disabled is DOWN."""
    await backend.ctl.set_disabled("c1", True, "x")
    await backend.ctl.force_down("c1")
    assert await backend.ctl.server_host_status("s2") == ("c1", HostStatus.DOWN)


async def test_silent_host_is_unknown(backend: Backend) -> None:
    """A host whose compute service stopped reporting, not forced down, is UNKNOWN."""
    await backend.set_alive("c1", False)
    assert await status(backend, "c1") is HostStatus.UNKNOWN
    assert await backend.ctl.server_host_status("s1") == ("c1", HostStatus.UNKNOWN)


async def test_unknown_hosts_and_servers(backend: Backend) -> None:
    """Acting on a host or server the controller does not know raises NotFound."""
    with pytest.raises(NotFound):
        await backend.ctl.force_down("nowhere")
    with pytest.raises(NotFound):
        await backend.ctl.set_disabled("nowhere", True, "x")
    with pytest.raises(NotFound):
        await backend.ctl.server_host_status("ghost")
    with pytest.raises(NotFound):
        await backend.ctl.host_is_empty("nowhere")
    with pytest.raises(NotFound):
        await backend.ctl.migrate_server("ghost", "c3")


async def test_reset_servers_to_error(backend: Backend) -> None:
    """Servers reset to error show ERROR; an unknown id is reported by id while the others are reset."""
    failed = await backend.ctl.reset_servers_state(["s1", "ghost", "s2"], ServerState.ERROR)
    assert list(failed) == ["ghost"] and isinstance(failed["ghost"], NotFound)
    assert [s.state for s in await backend.ctl.servers_on_host("c1")] == [ServerState.ERROR, ServerState.ERROR]
    assert (await backend.ctl.servers_on_host("c2"))[0].state is ServerState.ACTIVE
    assert await backend.ctl.reset_servers_state(["s1"], ServerState.ACTIVE) == {}
    assert [s.state for s in await backend.ctl.servers_on_host("c1")] == [ServerState.ACTIVE, ServerState.ERROR]


async def test_port_data_plane_status(backend: Backend) -> None:
    """Ports set DOWN read back DOWN, then ACTIVE; unknown ports are reported; other values are refused."""
    failed = await backend.ctl.set_ports_data_plane_status(["port-1", "port-2", "ghost"], "DOWN")
    assert list(failed) == ["ghost"] and isinstance(failed["ghost"], NotFound)
    assert [p.data_plane_status for p in await backend.ctl.ports_on_host("c1")] == ["DOWN", "DOWN"]
    assert [p.data_plane_status for p in await backend.ctl.ports_on_host("c2")] == [None]
    assert await backend.ctl.set_ports_data_plane_status(["port-1"], "ACTIVE") == {}
    assert [p.data_plane_status for p in await backend.ctl.ports_on_host("c1")] == ["ACTIVE", "DOWN"]
    with pytest.raises(ControllerError):
        await backend.ctl.set_ports_data_plane_status(["port-1"], "BROKEN")


async def test_migrate_moves_a_server(backend: Backend) -> None:
    """A migrated server is on the target host with its owner and ports, and gone from the source."""
    await backend.ctl.migrate_server("s1", "c3")
    assert await backend.ctl.servers_on_host("c3") == [Server("s1", "vnf-a", "c3", "p1", "u1")]
    assert await backend.ctl.servers_on_host("c1") == [S2]
    assert [p.id for p in await backend.ctl.ports_on_host("c3")] == ["port-1"]
    assert (await backend.ctl.server_host_status("s1"))[0] == "c3"


async def test_migrate_without_target_picks_a_usable_host(backend: Backend) -> None:
    """Without a target the server goes to the least loaded usable host (here the empty c3)."""
    await backend.ctl.migrate_server("s2")
    assert [s.id for s in await backend.ctl.servers_on_host("c3")] == ["s2"]


async def test_migrate_off_a_forced_down_host(backend: Backend) -> None:
    """A server on a fenced, forced-down host is moved off it too (Nova: evacuation)."""
    await backend.ctl.force_down("c1")
    await backend.ctl.migrate_server("s1", "c2")
    assert [s.id for s in await backend.ctl.servers_on_host("c2")] == ["s1", "s3"]


async def test_migrate_to_an_unusable_host_fails(backend: Backend) -> None:
    """A disabled or forced-down target, or the server's own host, is refused and the server stays."""
    await backend.ctl.set_disabled("c3", True, "maintenance")
    await backend.ctl.force_down("c2")
    for target in ("c3", "c2", "c1"):
        with pytest.raises(ControllerError):
            await backend.ctl.migrate_server("s1", target)
    assert (await backend.ctl.server_host_status("s1"))[0] == "c1"


async def test_no_usable_host_fails(backend: Backend) -> None:
    """With no other usable host, a move without target fails and the server stays."""
    await backend.ctl.set_disabled("c2", True, "x")
    await backend.ctl.set_disabled("c3", True, "x")
    with pytest.raises(ControllerError):
        await backend.ctl.migrate_server("s1")
    assert [s.id for s in await backend.ctl.servers_on_host("c1")] == ["s1", "s2"]


async def test_host_is_empty(backend: Backend) -> None:
    """A host is empty when no server is on it: true at once for c3, for c2 once its server has moved."""
    assert await backend.ctl.host_is_empty("c3") is True
    assert await backend.ctl.host_is_empty("c2") is False
    await backend.ctl.migrate_server("s3", "c3")
    assert await backend.ctl.host_is_empty("c2") is True
    assert await backend.ctl.host_is_empty("c3") is False


async def test_state_is_kept_per_host(backend: Backend) -> None:
    """Changing one host leaves the others as they were."""
    await backend.ctl.force_down("c1")
    await backend.ctl.set_disabled("c2", True, "why")
    assert [h.status for h in await backend.ctl.list_hosts()] == [HostStatus.DOWN, HostStatus.MAINTENANCE, HostStatus.UP]
    assert isinstance(await backend.ctl.get_host("c3"), Host)


async def test_servers_shut_down_and_started_where_they_are(backend: Backend) -> None:
    """A server shut down is STOPPED on its host (it stays there); started again, ACTIVE; asking twice is
    harmless; an unknown id is reported by id while the others are done."""
    failed = await backend.ctl.set_servers_running(["s1", "ghost"], False)
    assert list(failed) == ["ghost"] and isinstance(failed["ghost"], NotFound)
    assert [(s.id, s.state) for s in await backend.ctl.servers_on_host("c1")] == [
        ("s1", ServerState.STOPPED), ("s2", ServerState.ACTIVE)]
    assert await backend.ctl.set_servers_running(["s1"], False) == {}
    assert await backend.ctl.set_servers_running(["s1"], True) == {}
    assert (await backend.ctl.servers_on_host("c1"))[0].state is ServerState.ACTIVE
    assert await backend.ctl.set_servers_running(["s1"], True) == {}


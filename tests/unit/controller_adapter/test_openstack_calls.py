"""The exact HTTP calls of the OpenStack backend, on clouds below and above compute 2.53.

openstacksdk sends real requests to tests.openstack_cloud; each test asserts
method, path, query, body and the ``OpenStack-API-Version`` microversion of
every Nova/Neutron call, and the state the cloud ends in.
"""

from __future__ import annotations

import time

from collections.abc import Awaitable, Callable

import pytest

from controller_adapter.base import ControllerError, Host, HostStatus, NotFound, Port, Server, ServerState, Unsupported
from controller_adapter.openstack import OpenStackController
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import calls, of, seed

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]


def versions(compute_max: str) -> tuple[str, str, str]:
    """(services, servers, migrations) microversions the SDK picks: min(cloud max, its cap per resource)."""
    if compute_max == "2.52":
        return "2.52", "2.52", "2.52"
    return "2.69", "2.90", "2.80"


async def test_connect_authenticates_and_discovers_once(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Connecting gets one Keystone token with the clouds.yaml credentials and discovers compute and network."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, connect=False)
    await ctl.connect()
    await ctl.list_hosts()
    await ctl.list_hosts()
    tokens = of(cloud, "POST", "/identity/v3/auth/tokens")
    assert len(tokens) == 1
    user = tokens[0].body["auth"]["identity"]["password"]["user"]
    assert (user["name"], user["domain"]) == ("doctor", {"name": "Default"})
    assert tokens[0].body["auth"]["scope"]["project"]["name"] == "admin"
    assert [r.path for r in of(cloud, "GET", "/compute/v2.1") if r.path == "/compute/v2.1"]
    assert all(r.headers.get("x-auth-token") == "gAAAAA-fake-token" for r in cloud.requests("compute")
               if r.path.startswith("/compute/v2.1/"))


async def test_list_and_get_hosts(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Hosts are Nova's nova-compute services, with forced-down, disabled (and reason), liveness and zone."""
    cloud = make_cloud(compute_max=compute_max)
    cloud.add_host("c1", zone="az1")
    cloud.add_host("c2", disabled=True, disabled_reason="firmware")
    cloud.add_host("c3", alive=False)
    ctl = await make_controller(cloud)
    svc_mv, _, _ = versions(compute_max)
    hosts = await ctl.list_hosts()
    assert hosts == [Host("c1", zone="az1"), Host("c2", disabled=True, disabled_reason="firmware", zone="nova"),
                     Host("c3", alive=False, zone="nova")]
    assert [h.status for h in hosts] == [HostStatus.UP, HostStatus.MAINTENANCE, HostStatus.UNKNOWN]
    assert await ctl.get_host("c2") == hosts[1]
    assert [c for c in calls(cloud) if c[1] != "/compute/v2.1/os-aggregates"] == [
        ("GET", "/compute/v2.1/os-services", {"binary": ["nova-compute"]}, None, svc_mv),
        ("GET", "/compute/v2.1/os-services", {"binary": ["nova-compute"], "host": ["c2"]}, None, svc_mv),
    ]
    assert [c[:3] for c in calls(cloud) if c[1] == "/compute/v2.1/os-aggregates"] == [
        ("GET", "/compute/v2.1/os-aggregates", {})], "the topology: once per listing"
    with pytest.raises(NotFound):
        await ctl.get_host("nowhere")


async def test_switches_come_from_host_aggregates(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A host aggregate whose metadata names a switch (doctor_switch) gives its hosts that switch; aggregates
    without it give none; when Nova refuses the aggregates (policy), hosts are listed without a switch."""
    cloud = make_cloud()
    for h in ("c1", "c2", "c3"):
        cloud.add_host(h, zone="az1")
    cloud.add_aggregate("rack-1", ["c1", "c2"], {"doctor_switch": "tor-1"})
    cloud.add_aggregate("ssd", ["c2", "c3"], {"disk": "ssd"})
    ctl = await make_controller(cloud)
    assert {h.name: h.switch for h in await ctl.list_hosts()} == {"c1": "tor-1", "c2": "tor-1", "c3": ""}
    cloud.fail("GET", r"/os-aggregates", 403, times=10)
    assert {h.name: h.switch for h in await ctl.list_hosts()} == {"c1": "", "c2": "", "c3": ""}


async def test_force_down_and_up(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Force down/up sends Nova's form for the cloud's microversion; from 2.53 the service uuid is looked up once."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    await ctl.force_down("c1")
    assert cloud.service("c1").forced_down
    assert (await ctl.server_host_status("s1"))[1] is HostStatus.DOWN
    await ctl.force_down("c1", False)
    assert not cloud.service("c1").forced_down
    uuid = cloud.service("c1").uuid
    svc_call = [c for c in calls(cloud) if "/servers/" not in c[1]]
    if compute_max == "2.52":
        assert svc_call == [
            ("PUT", "/compute/v2.1/os-services/force-down", {},
             {"host": "c1", "binary": "nova-compute", "forced_down": True}, "2.11"),
            ("PUT", "/compute/v2.1/os-services/force-down", {},
             {"host": "c1", "binary": "nova-compute", "forced_down": False}, "2.11"),
        ]
    else:
        assert svc_call == [
            ("GET", "/compute/v2.1/os-services", {"binary": ["nova-compute"], "host": ["c1"]}, None, "2.69"),
            ("PUT", f"/compute/v2.1/os-services/{uuid}", {}, {"forced_down": True}, "2.69"),
            ("PUT", f"/compute/v2.1/os-services/{uuid}", {}, {"forced_down": False}, "2.69"),  # uuid cached
        ]


async def test_force_down_twice_sends_twice(compute_max: str, make_cloud: MakeCloud,
                                            make_controller: MakeController) -> None:
    """A repeated force-down still reaches Nova (the SDK's skip-unchanged-attributes trap is avoided)."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    await ctl.force_down("c1")
    await ctl.force_down("c1")
    assert len(of(cloud, "PUT", "/compute/v2.1/os-services/")) == 2


async def test_service_ids_come_from_host_listing(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """After list_hosts the uuid of every host is cached: forcing any of them down is a single PUT."""
    cloud = seed(make_cloud(compute_max="2.90"))
    ctl = await make_controller(cloud)
    await ctl.list_hosts()
    cloud.clear_requests()
    await ctl.force_down("c2")
    assert calls(cloud) == [("PUT", f"/compute/v2.1/os-services/{cloud.service('c2').uuid}", {},
                             {"forced_down": True}, "2.69")]


async def test_stale_service_id_is_looked_up_again(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A host whose service was re-created (new uuid, 404 on the cached one) is looked up again and forced down."""
    cloud = seed(make_cloud(compute_max="2.90"))
    ctl = await make_controller(cloud)
    await ctl.list_hosts()
    old = cloud.service("c1").uuid
    cloud.add_host("c1")  # nova-compute re-registered: new uuid
    new = cloud.service("c1").uuid
    cloud.clear_requests()
    await ctl.force_down("c1")
    assert [(c[0], c[1], c[2]) for c in calls(cloud)] == [
        ("PUT", f"/compute/v2.1/os-services/{old}", {}),
        ("GET", "/compute/v2.1/os-services", {"binary": ["nova-compute"], "host": ["c1"]}),
        ("PUT", f"/compute/v2.1/os-services/{new}", {}),
    ]
    assert cloud.service("c1").forced_down


async def test_force_down_unknown_host(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Forcing down a host Nova does not know raises NotFound, in both API forms."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    with pytest.raises(NotFound):
        await ctl.force_down("nowhere")


async def test_force_down_needs_2_11(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """On a cloud older than compute 2.11 force-down is Unsupported and nothing is sent."""
    cloud = seed(make_cloud(compute_max="2.10"))
    ctl = await make_controller(cloud)
    with pytest.raises(Unsupported, match="2.11"):
        await ctl.force_down("c1")
    assert calls(cloud) == []


async def test_disable_with_reason_and_enable(compute_max: str, make_cloud: MakeCloud,
                                              make_controller: MakeController) -> None:
    """Disable carries the reason (host_status MAINTENANCE); enable clears it."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    await ctl.set_disabled("c1", True, "doctor: maintenance")
    assert (cloud.service("c1").disabled, cloud.service("c1").disabled_reason) == (True, "doctor: maintenance")
    assert (await ctl.server_host_status("s1"))[1] is HostStatus.MAINTENANCE
    await ctl.set_disabled("c1", False)
    assert (cloud.service("c1").disabled, cloud.service("c1").disabled_reason) == (False, None)
    await ctl.set_disabled("c2", True)
    uuid = cloud.service("c1").uuid
    svc = [c for c in calls(cloud) if c[1].startswith("/compute/v2.1/os-services/")]
    if compute_max == "2.52":
        assert svc == [
            ("PUT", "/compute/v2.1/os-services/disable-log-reason", {},
             {"host": "c1", "binary": "nova-compute", "disabled_reason": "doctor: maintenance"}, None),
            ("PUT", "/compute/v2.1/os-services/enable", {}, {"host": "c1", "binary": "nova-compute"}, None),
            ("PUT", "/compute/v2.1/os-services/disable", {}, {"host": "c2", "binary": "nova-compute"}, None),
        ]
    else:
        assert svc == [
            ("PUT", f"/compute/v2.1/os-services/{uuid}", {},
             {"status": "disabled", "disabled_reason": "doctor: maintenance"}, "2.69"),
            ("PUT", f"/compute/v2.1/os-services/{uuid}", {}, {"status": "enabled"}, "2.69"),
            ("PUT", f"/compute/v2.1/os-services/{cloud.service('c2').uuid}", {}, {"status": "disabled"}, "2.69"),
        ]


async def test_servers_on_host_all_projects(compute_max: str, make_cloud: MakeCloud,
                                            make_controller: MakeController) -> None:
    """The servers of every project on a host, with owner project and user, filtered by Nova (host=, all_tenants)."""
    cloud = seed(make_cloud(compute_max=compute_max))
    cloud.add_server("s5", host="c3", project_id="p3", status="ERROR")
    ctl = await make_controller(cloud)
    _, srv_mv, _ = versions(compute_max)
    assert await ctl.servers_on_host("c1") == [
        Server("s1", "vnf-a", "c1", "p1", "u1"), Server("s2", "vnf-b", "c1", "p2", "u2"),
        Server("s3", "vnf-c", "c1", "p1", "u1")]
    assert await ctl.servers_on_host("c3") == [Server("s5", "s5", "c3", "p3", "", ServerState.ERROR)]
    assert await ctl.servers_on_host("nowhere") == []
    assert calls(cloud)[0] == ("GET", "/compute/v2.1/servers/detail", {"host": ["c1"], "all_tenants": ["True"]},
                               None, srv_mv)


async def test_servers_are_read_across_pages(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A host with more servers than Nova's page size is listed completely, following servers_links."""
    cloud = make_cloud(page_size=2)
    cloud.add_host("c1")
    for i in range(5):
        cloud.add_server(f"s{i}", host="c1", project_id="p1")
    ctl = await make_controller(cloud)
    assert [s.id for s in await ctl.servers_on_host("c1")] == ["s0", "s1", "s2", "s3", "s4"]
    pages = [c[2] for c in calls(cloud)]
    assert pages == [{"host": ["c1"], "all_tenants": ["True"]},
                     {"host": ["c1"], "all_tenants": ["True"], "limit": ["2"], "marker": ["s1"]},
                     {"host": ["c1"], "all_tenants": ["True"], "limit": ["2"], "marker": ["s3"]}]


async def test_list_servers_of_a_project(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """list_servers asks Nova for all projects, or one project's servers."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    assert [s.id for s in await ctl.list_servers()] == ["s1", "s2", "s3", "s4"]
    assert [s.id for s in await ctl.list_servers("p2")] == ["s2", "s4"]
    assert [c[2] for c in calls(cloud)] == [{"all_tenants": ["True"]}, {"all_tenants": ["True"], "project_id": ["p2"]}]


async def test_reset_servers_to_error(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Each server gets os-resetState; an unknown id is reported as NotFound while the others succeed."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud)
    _, srv_mv, _ = versions(compute_max)
    failed = await ctl.reset_servers_state(["s1", "ghost", "s2", "s1"], ServerState.ERROR)
    assert list(failed) == ["ghost"] and isinstance(failed["ghost"], NotFound)
    assert failed["ghost"].status == 404 and (failed["ghost"].request_id or "").startswith("req-")
    assert (cloud.server("s1").status, cloud.server("s2").vm_state, cloud.server("s3").status) == ("ERROR", "error", "ACTIVE")
    assert sorted(c[1] for c in calls(cloud)) == ["/compute/v2.1/servers/ghost/action", "/compute/v2.1/servers/s1/action",
                                                  "/compute/v2.1/servers/s2/action"]  # s1 once
    assert {(c[0], str(c[3]), c[4]) for c in calls(cloud)} == {("POST", "{'os-resetState': {'state': 'error'}}", srv_mv)}
    await ctl.reset_servers_state(["s1"], ServerState.ACTIVE)
    assert cloud.server("s1").status == "ACTIVE"


async def test_reset_to_other_states_is_unsupported(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Nova's os-resetState sets only active or error: other states are refused before anything is sent."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    with pytest.raises(Unsupported):
        await ctl.reset_servers_state(["s1"], ServerState.STOPPED)
    assert calls(cloud) == []


@pytest.mark.parametrize(("setup", "expected"), [
    ({}, HostStatus.UP), ({"forced_down": True}, HostStatus.DOWN), ({"disabled": True}, HostStatus.MAINTENANCE),
    ({"alive": False}, HostStatus.UNKNOWN), ({"forced_down": True, "disabled": True}, HostStatus.DOWN)])
async def test_server_host_status(setup: dict[str, bool], expected: HostStatus, make_cloud: MakeCloud,
                                  make_controller: MakeController) -> None:
    """host_status of a server is read from GET /servers/{id} (2.16+), as Nova derives it."""
    cloud = make_cloud(compute_max="2.16")
    cloud.add_host("c1", **setup)
    cloud.add_server("s1", host="c1", project_id="p1")
    ctl = await make_controller(cloud)
    assert await ctl.server_host_status("s1") == ("c1", expected)
    assert calls(cloud) == [("GET", "/compute/v2.1/servers/s1", {}, None, "2.16")]
    with pytest.raises(NotFound):
        await ctl.server_host_status("ghost")


async def test_server_host_status_needs_2_16(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Below compute 2.16 there is no host_status: Unsupported, and nothing is sent."""
    cloud = seed(make_cloud(compute_max="2.15"))
    ctl = await make_controller(cloud)
    with pytest.raises(Unsupported, match="2.16"):
        await ctl.server_host_status("s1")
    assert calls(cloud) == []


async def test_ports_on_host(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Ports bound to a host come from Neutron's binding:host_id filter, with owner, device and data_plane_status."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    assert await ctl.ports_on_host("c1") == [Port("port-1", "c1", "p1", "s1"), Port("port-2", "c1", "p2", "s2")]
    assert calls(cloud) == [("GET", "/network/v2.0/ports", {"binding:host_id": ["c1"]}, None, None)]


async def test_port_data_plane_status(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """One PUT per port with data_plane_status; the extension is checked once, when connecting; an unknown port is
    NotFound."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    failed = await ctl.set_ports_data_plane_status(["port-1", "port-2", "ghost"], "DOWN")
    assert list(failed) == ["ghost"] and isinstance(failed["ghost"], NotFound)
    assert (cloud.port("port-1").data_plane_status, cloud.port("port-2").data_plane_status) == ("DOWN", "DOWN")
    assert [p.data_plane_status for p in await ctl.ports_on_host("c1")] == ["DOWN", "DOWN"]
    assert await ctl.set_ports_data_plane_status(["port-1"], "ACTIVE") == {}
    assert cloud.port("port-1").data_plane_status == "ACTIVE"
    got = calls(cloud)
    puts = [c for c in got if c[0] == "PUT"]
    assert sorted((c[1], str(c[3])) for c in puts) == [
        ("/network/v2.0/ports/ghost", "{'port': {'data_plane_status': 'DOWN'}}"),
        ("/network/v2.0/ports/port-1", "{'port': {'data_plane_status': 'ACTIVE'}}"),
        ("/network/v2.0/ports/port-1", "{'port': {'data_plane_status': 'DOWN'}}"),
        ("/network/v2.0/ports/port-2", "{'port': {'data_plane_status': 'DOWN'}}")]
    assert [c for c in got if "extensions" in c[1]] == []  # read when connecting (make_controller), not again


async def test_data_plane_status_without_extension(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Without the data-plane-status extension: Unsupported saying what to enable, and no port is touched."""
    cloud = seed(make_cloud(data_plane_status=False))
    ctl = await make_controller(cloud)
    with pytest.raises(Unsupported, match=r"extension_drivers = \.\.\.,data_plane_status"):
        await ctl.set_ports_data_plane_status(["port-1"], "DOWN")
    assert calls(cloud) == []  # the extensions were read when connecting: no port is touched
    assert [p.data_plane_status for p in await ctl.ports_on_host("c1")] == [None, None]


async def test_a_known_extension_is_checked_again_behind_the_port_updates(
        make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Once the check is old, a fault's port updates do not wait for the GET of Neutron's extensions: they leave
    at once and the check runs behind them; a missing extension is checked again before (it may be enabled)."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    assert ctl._dps is not None and ctl._dps[1]
    ctl._dps = (ctl._dps[0] - 3600, True)  # an hour old (the case under test, not a wait)
    cloud.latency_s = 0.2
    with cloud._lock:
        cloud.max_in_flight = 0
    assert await ctl.set_ports_data_plane_status(["port-1"], "DOWN") == {}
    assert ctl._dps_check is not None
    await ctl._dps_check
    got = [(r.method, r.path) for r in cloud.requests() if r.service == "network"]
    assert sorted(got) == [("GET", "/network/v2.0/extensions"), ("PUT", "/network/v2.0/ports/port-1")]
    assert cloud.max_in_flight == 2  # at the cloud together: the update did not wait for the check
    assert time.monotonic() - ctl._dps[0] < 60  # checked again
    cloud.latency_s = 0.0
    cloud.set_data_plane_status(False)
    ctl._dps = (ctl._dps[0] - 3600, False)  # known missing, and old: asked again before
    cloud.set_data_plane_status(True)
    cloud.clear_requests()
    assert await ctl.set_ports_data_plane_status(["port-1"], "ACTIVE") == {}
    assert [(r.method, r.path) for r in cloud.requests() if r.service == "network"][:2] == [
        ("GET", "/network/v2.0/extensions"), ("PUT", "/network/v2.0/ports/port-1")]


async def test_data_plane_status_value_checked(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Only ACTIVE and DOWN are accepted, before anything is sent."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    with pytest.raises(ControllerError):
        await ctl.set_ports_data_plane_status(["port-1"], "UP")
    assert calls(cloud) == []

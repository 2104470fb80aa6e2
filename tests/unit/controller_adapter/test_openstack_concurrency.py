"""Per-server and per-port calls run in parallel, bounded; the host's server list can be cached."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from controller_adapter.base import ServerState
from controller_adapter.openstack import OpenStackController
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import of

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]

LATENCY_S = 0.05  # what each Nova/Neutron call costs in the cloud
N = 16


def crowded(cloud: FakeCloud) -> FakeCloud:
    cloud.add_host("c1")
    cloud.add_host("c2")
    for i in range(N):
        cloud.add_server(f"s{i:02}", host="c1", project_id="p1")
        cloud.add_port(f"port-{i:02}", host="c1", project_id="p1", device_id=f"s{i:02}")
    return cloud


async def test_resets_run_in_parallel_up_to_max_in_flight(make_cloud: MakeCloud,
                                                          make_controller: MakeController) -> None:
    """16 resets with max_in_flight 8: exactly 8 in flight at once, in about 2 round trips instead of 16, over at
    most 8 kept-alive connections (the fault path's raw HTTP, whatever the SDK's worker pool)."""
    cloud = crowded(make_cloud())
    ctl = await make_controller(cloud, max_in_flight=8, max_workers=1)
    cloud.latency_s, cloud.max_in_flight = LATENCY_S, 0
    started = time.monotonic()
    assert await ctl.reset_servers_state([f"s{i:02}" for i in range(N)], ServerState.ERROR) == {}
    elapsed = time.monotonic() - started
    assert cloud.max_in_flight == 8
    print(f"{N} resets, {cloud.max_in_flight} in flight: {elapsed * 1000:.0f} ms")
    assert elapsed < N * LATENCY_S / 2, elapsed  # serial would take N * latency
    assert all(cloud.server(f"s{i:02}").status == "ERROR" for i in range(N))
    assert len({r.client_port for r in of(cloud, "POST", "/compute/v2.1/servers/")}) <= 8


async def test_in_flight_bound(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """With max_in_flight = 3 no more than 3 port updates ever reach the cloud at once."""
    cloud = crowded(make_cloud())
    ctl = await make_controller(cloud, max_in_flight=3)
    cloud.latency_s, cloud.max_in_flight = LATENCY_S / 5, 0
    assert await ctl.set_ports_data_plane_status([f"port-{i:02}" for i in range(N)], "DOWN") == {}
    assert cloud.max_in_flight == 3
    assert all(cloud.port(f"port-{i:02}").data_plane_status == "DOWN" for i in range(N))


async def test_without_the_fast_path_the_worker_pool_bounds_them(make_cloud: MakeCloud,
                                                                 make_controller: MakeController) -> None:
    """http_fast_path = false: the same writes through openstacksdk, at most max_workers at once."""
    cloud = crowded(make_cloud())
    ctl = await make_controller(cloud, max_workers=3, http_fast_path=False)
    cloud.latency_s, cloud.max_in_flight = LATENCY_S / 5, 0
    assert await ctl.reset_servers_state([f"s{i:02}" for i in range(N)], ServerState.ERROR) == {}
    assert cloud.max_in_flight == 3
    assert all(cloud.server(f"s{i:02}").status == "ERROR" for i in range(N))


async def test_server_list_cache(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """With server_cache_s the host's server list is answered from memory, and dropped when we change servers."""
    cloud = crowded(make_cloud())
    ctl = await make_controller(cloud, server_cache_s=60)
    first = await ctl.servers_on_host("c1")
    assert await ctl.servers_on_host("c1") == first
    assert len(of(cloud, "GET", "/compute/v2.1/servers/detail")) == 1
    await ctl.reset_servers_state(["s00"], ServerState.ERROR)
    fresh = await ctl.servers_on_host("c1")
    assert len(of(cloud, "GET", "/compute/v2.1/servers/detail")) == 2
    assert fresh[0].state is ServerState.ERROR


async def test_no_cache_by_default(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """By default every servers_on_host asks Nova (the inspector keeps its own resource map)."""
    cloud = crowded(make_cloud())
    ctl = await make_controller(cloud)
    await ctl.servers_on_host("c1")
    cloud.add_server("late", host="c1", project_id="p2")
    assert "late" in [s.id for s in await ctl.servers_on_host("c1")]
    assert len(of(cloud, "GET", "/compute/v2.1/servers/detail")) == 2

"""Fixtures for the OpenStack backend's unit tests: a local cloud and controllers pointed at it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller_adapter.openstack import OpenStackController, Settings
from tests.openstack_cloud import FakeCloud, Recorded

Call = tuple[str, str, dict[str, list[str]], Any, str | None]


def seed(cloud: FakeCloud) -> FakeCloud:
    """Three hosts, four servers of two projects on c1/c2, three ports."""
    for h in ("c1", "c2", "c3"):
        cloud.add_host(h)
    cloud.add_server("s1", host="c1", project_id="p1", user_id="u1", name="vnf-a")
    cloud.add_server("s2", host="c1", project_id="p2", user_id="u2", name="vnf-b")
    cloud.add_server("s3", host="c1", project_id="p1", user_id="u1", name="vnf-c")
    cloud.add_server("s4", host="c2", project_id="p2", user_id="u2", name="vnf-d")
    cloud.add_port("port-1", host="c1", project_id="p1", device_id="s1")
    cloud.add_port("port-2", host="c1", project_id="p2", device_id="s2")
    cloud.add_port("port-4", host="c2", project_id="p2", device_id="s4")
    return cloud


def calls(cloud: FakeCloud) -> list[Call]:
    """Nova and Neutron API calls as (method, path, query, body, compute microversion), discovery left out."""
    return [(r.method, r.path, r.query, r.body, r.microversion) for r in cloud.requests()
            if r.service in ("compute", "network") and r.path not in ("/compute", "/compute/v2.1", "/network/v2.0")]


def of(cloud: FakeCloud, method: str, path_prefix: str) -> list[Recorded]:
    """Requests with this method ("" for any) under this path."""
    return [r for r in cloud.requests() if method in ("", r.method) and r.path.startswith(path_prefix)]


@pytest.fixture
def make_cloud() -> Iterator[Callable[..., FakeCloud]]:
    clouds: list[FakeCloud] = []

    def make(**kw: Any) -> FakeCloud:
        cloud = FakeCloud(**kw).start()
        clouds.append(cloud)
        return cloud

    yield make
    for cloud in clouds:
        cloud.stop()


@pytest.fixture
async def make_controller(tmp_path: Path,
                          make_cloud: Callable[..., FakeCloud]) -> AsyncIterator[Callable[..., Awaitable[OpenStackController]]]:
    """``await make(cloud, **settings)``: a connected controller; the recorded requests start empty."""
    controllers: list[OpenStackController] = []
    n = itertools.count()

    async def make(cloud: FakeCloud, *, connect: bool = True, **settings: Any) -> OpenStackController:
        directory = tmp_path / f"cloud-{next(n)}"
        directory.mkdir()
        settings.setdefault("timeout_s", 5.0)
        ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=cloud.write_clouds_yaml(directory), **settings))
        controllers.append(ctl)
        if connect:
            await ctl.connect()
            cloud.clear_requests()
        return ctl

    yield make
    for ctl in controllers:
        await ctl.close()


@pytest.fixture(params=["2.52", "2.90"], ids=["nova-2.52", "nova-2.90"])
def compute_max(request: pytest.FixtureRequest) -> str:
    """Both sides of 2.53, where Nova's service API changed form."""
    return str(request.param)

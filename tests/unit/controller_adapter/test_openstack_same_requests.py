"""The fault path's raw HTTP sends the SDK's requests: each write sent both ways (``http_fast_path`` on and off)
to the same cloud, compared on method, path, query, the body's bytes, the token, content type, Accept and
microversion headers. What differs: the User-Agent names nfv-doctor before the SDK's, and requests spells out
``Connection: keep-alive``, HTTP/1.1's default, which aiohttp leaves implicit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller_adapter.base import ServerState
from controller_adapter.openstack import OpenStackController
from tests.openstack_cloud import FakeCloud, Recorded
from tests.unit.controller_adapter.conftest import seed

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]
COMPARED = ("x-auth-token", "content-type", "accept", "openstack-api-version", "x-openstack-nova-api-version")


def wire(r: Recorded) -> tuple[Any, ...]:
    return (r.method, r.path, r.query, r.raw, tuple(r.headers.get(h) for h in COMPARED), r.status)


async def writes(cloud: FakeCloud, ctl: OpenStackController) -> list[Recorded]:
    """The fault path's three kinds of write, as the cloud received them."""
    await ctl.force_down("c1", False)  # the service's id is learnt (through the SDK either way)
    cloud.clear_requests()
    await ctl.force_down("c1")
    assert await ctl.reset_servers_state(["s1"], ServerState.ERROR) == {}
    assert await ctl.set_ports_data_plane_status(["port-1"], "DOWN") == {}
    return [r for r in cloud.requests() if r.method in ("PUT", "POST") and r.service in ("compute", "network")]


@pytest.mark.parametrize("compute_max", ["2.60", "2.90"])
async def test_each_write_is_the_sdks_request(compute_max: str, make_cloud: MakeCloud,
                                              make_controller: MakeController) -> None:
    cloud = seed(make_cloud(compute_max=compute_max))
    fast = await make_controller(cloud)
    raw = await writes(cloud, fast)
    sdk = await make_controller(cloud, http_fast_path=False)
    through_sdk = await writes(cloud, sdk)
    assert [wire(r) for r in raw] == [wire(r) for r in through_sdk]
    assert len(raw) == 3 and all(r.raw for r in raw)  # three writes, each with a body
    assert all(r.headers["user-agent"].startswith("nfv-doctor ") for r in raw)
    assert not any(r.headers["user-agent"].startswith("nfv-doctor") for r in through_sdk)
    assert {r.headers["user-agent"].removeprefix("nfv-doctor ") for r in raw} == \
        {r.headers["user-agent"] for r in through_sdk}  # keystoneauth's, after our name

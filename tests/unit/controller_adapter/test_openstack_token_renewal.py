"""The fault path's raw HTTP never sends a token it knows expired, and renews one near its expiry behind the call,
not before it (``_openstack_http.HttpPath.endpoints``). Against the test cloud's Keystone."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from controller_adapter import _openstack_http
from controller_adapter.base import ServerState
from controller_adapter.openstack import OpenStackController
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import seed
from doctor_common.lab.cloud import wait_for

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]


async def ready(make_cloud: MakeCloud, make_controller: MakeController) -> tuple[FakeCloud, OpenStackController]:
    """A controller whose raw path holds its endpoints (one reset sent) and knows c1's service id."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    await ctl.force_down("c1", False)  # through the SDK: the service's id is learnt
    assert await ctl.reset_servers_state(["s1"], ServerState.ERROR) == {}
    cloud.clear_requests()
    return cloud, ctl


async def test_the_token_expiry_is_known(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    _cloud, ctl = await ready(make_cloud, make_controller)
    assert ctl._http is not None
    ep = await ctl._http.endpoints()
    assert time.time() + 3000 < ep.expires_at < time.time() + 3700  # the test Keystone's tokens live an hour


async def test_an_expired_token_is_renewed_before_the_write_not_after_a_401(make_cloud: MakeCloud,
                                                                           make_controller: MakeController) -> None:
    cloud, ctl = await ready(make_cloud, make_controller)
    assert ctl._http is not None
    ep = await ctl._http.endpoints()
    cloud.revoke_tokens()  # the cloud no longer takes it, as after its expiry
    ctl._http._endpoints = replace(ep, expires_at=time.time() - 1)  # and it has expired (the case under test)
    await ctl.force_down("c1")
    sent = [(r.method, r.path, r.status) for r in cloud.requests()]
    assert ("PUT", f"/compute/v2.1/os-services/{ctl._ids.get('c1')}", 200) in sent
    assert all(status != 401 for _, _, status in sent), sent  # no request went out with the dead token
    assert sent[0][:2] == ("POST", "/identity/v3/auth/tokens")  # authenticated first


async def test_a_token_near_its_expiry_is_renewed_behind_the_call(make_cloud: MakeCloud,
                                                                  make_controller: MakeController) -> None:
    cloud, ctl = await ready(make_cloud, make_controller)
    http = ctl._http
    assert http is not None
    ep = await http.endpoints()
    http._endpoints = replace(ep, expires_at=time.time() + _openstack_http.RENEW_BEFORE_S / 3)
    await ctl.force_down("c1")
    await ctl.force_down("c1")
    puts = [r for r in cloud.requests() if r.method == "PUT"]
    assert len(puts) == 2 and all(r.headers["x-auth-token"] == ep.token and r.status == 200 for r in puts)
    assert http.renewals == 1  # one renewal for both calls, begun by the first
    await wait_for(lambda: http._renewing is not None and http._renewing.done(), 10, 0.01, "the renewal")
    assert http._endpoints is not None and http._endpoints.expires_at > time.time() + _openstack_http.RENEW_BEFORE_S

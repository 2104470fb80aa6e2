"""The fault path's raw HTTP never sends a token it knows expired, and renews one near its expiry behind the call,
not before it (``_openstack_http.HttpPath.endpoints``). Against the test cloud's Keystone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

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
    """Less than ``RENEW_BEFORE_S`` left: keystoneauth is asked again behind the calls — a slow Keystone holds
    none of them — once for both, and the renewed token serves the calls after it."""
    cloud, ctl = await ready(make_cloud, make_controller)
    http = ctl._http
    assert http is not None
    ep = await http.endpoints()
    read = http._refresh
    renewal_done = asyncio.Event()

    async def slow_keystone(reauthenticate: bool) -> Any:
        await asyncio.sleep(1.0)  # the cloud's Keystone taking its time (the condition under test, not a wait)
        fresh = await read(reauthenticate)
        renewal_done.set()
        return replace(fresh, token=fresh.token, expires_at=time.time() + 3600)
    http._refresh = slow_keystone  # type: ignore[method-assign]
    http._endpoints = replace(ep, expires_at=time.time() + _openstack_http.RENEW_BEFORE_S / 2)
    started = time.monotonic()
    await ctl.force_down("c1")
    await ctl.force_down("c1")
    assert time.monotonic() - started < 0.8  # neither waited for the renewal
    puts = [r for r in cloud.requests() if r.method == "PUT"]
    assert len(puts) == 2 and all(r.headers["x-auth-token"] == ep.token and r.status == 200 for r in puts)
    assert http.renewals == 1  # one renewal for both calls, begun by the first
    await asyncio.wait_for(renewal_done.wait(), 10)
    await wait_for(lambda: http._renewing is not None and http._renewing.done(), 10, 0.01, "the renewal")
    assert http._endpoints is not None and http._endpoints.expires_at > time.time() + 3000  # in use now


async def test_a_refused_token_is_replaced_even_when_a_renewal_handed_the_same_one_back(
        make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A renewal may give back the very token it had (keystoneauth renews only near the expiry): a 401 with it
    still authenticates again, and the write goes through."""
    cloud, ctl = await ready(make_cloud, make_controller)
    http = ctl._http
    assert http is not None
    await http.endpoints()
    asked = http.endpoints

    async def renewal_landed_meanwhile(reauthenticate: bool = False, stale: Any = None) -> Any:
        if reauthenticate and http._endpoints is stale:  # while the refused request was out, a renewal
            http._endpoints = replace(stale)              # replaced the endpoints with the same token
        return await asked(reauthenticate, stale)
    http.endpoints = renewal_landed_meanwhile  # type: ignore[method-assign]
    cloud.revoke_tokens()
    await ctl.force_down("c1")
    sent = [(r.method, r.status) for r in cloud.requests() if r.method == "PUT"]
    assert sent == [("PUT", 401), ("PUT", 200)]

"""Failures of the cloud as the adapter reports them: translation, retries where safe, timeouts, tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions

from controller_adapter.base import BackendUnavailable, ControllerError, NotFound, ServerState
from controller_adapter.openstack import OpenStackController, Settings
from tests.openstack_cloud import FakeCloud
from tests.unit.controller_adapter.conftest import of, seed

MakeCloud = Callable[..., FakeCloud]
MakeController = Callable[..., Awaitable[OpenStackController]]


def causes(exc: BaseException) -> list[BaseException]:
    """The exception's cause chain (``raise ... from``), bounded."""
    out: list[BaseException] = []
    link = exc.__cause__ or exc.__context__
    while link is not None and len(out) < 20:
        out.append(link)
        link = link.__cause__ or link.__context__
    return out


async def test_reads_are_retried_on_503(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A GET answered 503 is retried and the caller sees only the result."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, retries=2)
    cloud.fail("GET", r"/os-services$", 503, times=2)
    assert [h.name for h in await ctl.list_hosts()] == ["c1", "c2", "c3"]
    assert [r.status for r in of(cloud, "GET", "/compute/v2.1/os-services")] == [503, 503, 200]


async def test_retries_are_bounded(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """When every attempt fails the caller gets BackendUnavailable with the status, request id and SDK cause."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, retries=2)
    cloud.fail("GET", r"/os-services$", 503, times=10)
    with pytest.raises(BackendUnavailable) as info:
        await ctl.list_hosts()
    assert info.value.status == 503 and (info.value.request_id or "").startswith("req-")
    assert isinstance(info.value.__cause__, sdk_exceptions.HttpException)
    assert len(of(cloud, "GET", "/compute/v2.1/os-services")) == 3


async def test_absolute_puts_are_retried(compute_max: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Force-down is a PUT of absolute state: a 502 is retried and the host ends forced down."""
    cloud = seed(make_cloud(compute_max=compute_max))
    ctl = await make_controller(cloud, retries=1)
    cloud.fail("PUT", r"/os-services/", 502)
    await ctl.force_down("c1")
    assert cloud.service("c1").forced_down
    assert [r.status for r in of(cloud, "PUT", "/compute/v2.1/os-services/")] == [502, 200]


async def test_forbidden_names_the_policy(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A 403 is not retried and says which policy rule the account lacks, with status and request id."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, retries=3)
    cloud.fail("POST", r"/servers/s1/action$", 403)
    failed = await ctl.reset_servers_state(["s1"], ServerState.ERROR)
    err = failed["s1"]
    assert type(err) is ControllerError and err.status == 403
    assert "os_compute_api:os-admin-actions:reset_state" in str(err)
    sent = of(cloud, "POST", "/compute/v2.1/servers/s1/action")
    assert len(sent) == 1 and err.request_id == sent[0].request_id


async def test_timeout_is_per_request(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A hung Nova costs timeout_s per attempt, then BackendUnavailable (caused by keystoneauth's ConnectTimeout)."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, timeout_s=0.3, retries=1)
    stall = cloud.stall("GET", r"/os-services$", 30, times=2)
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            await ctl.list_hosts()
        elapsed = time.monotonic() - started
    finally:
        stall.release()
    assert 0.6 <= elapsed < 3.0, elapsed
    assert any(isinstance(e, ks_exceptions.ConnectTimeout) for e in causes(info.value))


async def test_event_loop_runs_while_a_call_hangs(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """A call held by the cloud blocks neither the event loop nor other calls (they run on other workers)."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    stall = cloud.stall("GET", r"/servers/detail$", 30)
    held = asyncio.create_task(ctl.servers_on_host("c1"))
    try:
        assert await asyncio.to_thread(stall.entered.wait, 5)
        assert (await ctl.get_host("c2")).name == "c2"  # served while the other call hangs
        assert not held.done()
    finally:
        stall.release()
    assert [s.id for s in await held] == ["s1", "s2", "s3"]


async def test_unreachable_cloud(make_cloud: MakeCloud, tmp_path: Path) -> None:
    """Nothing listening at the auth URL: BackendUnavailable from keystoneauth's ConnectFailure."""
    cloud = make_cloud()
    path = cloud.write_clouds_yaml(tmp_path)
    cloud.stop()
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=path, timeout_s=2, retries=1))
    try:
        with pytest.raises(BackendUnavailable) as info:
            await ctl.list_hosts()
        assert any(isinstance(e, ks_exceptions.ConnectFailure) for e in causes(info.value))
    finally:
        await ctl.close()


async def test_wrong_password(make_cloud: MakeCloud, tmp_path: Path) -> None:
    """Bad credentials are a ControllerError with HTTP 401, not retried."""
    cloud = make_cloud()
    path = cloud.write_clouds_yaml(tmp_path)
    path.write_text(path.read_text().replace("fake-cloud-password", "wrong"))
    ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=path, retries=3))
    try:
        with pytest.raises(ControllerError) as info:
            await ctl.list_hosts()
        assert type(info.value) is ControllerError and info.value.status == 401
        assert len(of(cloud, "POST", "/identity/v3/auth/tokens")) == 1
    finally:
        await ctl.close()


async def test_unknown_cloud_name(make_cloud: MakeCloud, tmp_path: Path) -> None:
    """A cloud missing from clouds.yaml is a ControllerError that names it; nothing is sent."""
    cloud = make_cloud()
    path = cloud.write_clouds_yaml(tmp_path)
    ctl = OpenStackController(Settings(cloud="prod", clouds_yaml=path))
    try:
        with pytest.raises(ControllerError, match="prod"):
            await ctl.list_hosts()
        assert cloud.requests() == []
    finally:
        await ctl.close()


async def test_token_and_connection_are_reused(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Sequential calls share one token and one kept-alive TCP connection."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud, connect=False)
    for _ in range(10):
        await ctl.get_host("c1")
        await ctl.ports_on_host("c1")
    assert len(of(cloud, "POST", "/identity/v3/auth/tokens")) == 1
    assert len(cloud.connections) == 1


async def test_expired_token_is_renewed(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """After the token expires (401) keystoneauth authenticates again and the call succeeds."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    cloud.revoke_tokens()
    await ctl.force_down("c1")
    assert cloud.service("c1").forced_down
    assert len(of(cloud, "POST", "/identity/v3/auth/tokens")) == 1
    assert [(r.method, r.status) for r in of(cloud, "", "/compute/v2.1/os-services")] == [
        ("GET", 401), ("GET", 200), ("PUT", 200)]


async def test_not_found_keeps_the_cause(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """NotFound is raised from the SDK's NotFoundException, with Nova's message, status and request id."""
    cloud = seed(make_cloud())
    ctl = await make_controller(cloud)
    with pytest.raises(NotFound, match="Instance ghost could not be found") as info:
        await ctl.server_host_status("ghost")
    assert isinstance(info.value.__cause__, sdk_exceptions.NotFoundException)
    assert info.value.status == 404 and info.value.request_id


async def test_failed_connect_is_retried_afresh(make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Keystone answering 503 at start-up is BackendUnavailable, retried with a new connection, and then works."""
    cloud = seed(make_cloud())
    cloud.fail("POST", r"/auth/tokens$", 503)
    ctl = await make_controller(cloud, connect=False, retries=1)
    assert [h.name for h in await ctl.list_hosts()] == ["c1", "c2", "c3"]
    assert [r.status for r in of(cloud, "POST", "/identity/v3/auth/tokens")] == [503, 201]


@pytest.mark.parametrize("neutron", ["refusing", "missing"])
async def test_a_neutron_that_does_not_answer_degrades_only_port_updates(
        neutron: str, make_cloud: MakeCloud, make_controller: MakeController) -> None:
    """Neutron's endpoint refuses connections, or the catalog has none: Nova's operations (force-down, server
    resets) work regardless, since only Nova is discovered up front; port updates fail, saying why."""
    import socket

    cloud = seed(make_cloud())
    if neutron == "missing":
        cloud.network_url = ""
    else:
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            cloud.network_url = f"http://127.0.0.1:{s.getsockname()[1]}/network"
    ctl = await make_controller(cloud, retries=0, timeout_s=1.0)
    await ctl.force_down("c1")
    assert cloud.service("c1").forced_down
    assert await ctl.reset_servers_state(["s1"], ServerState.ERROR) == {}
    with pytest.raises(ControllerError):
        await ctl.set_ports_data_plane_status(["port-1"], "DOWN")

"""Every controller backend (embedded on SQLite, embedded on etcd, OpenStack), seeded with the same hosts, servers and ports, behind one fixture."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller_adapter.base import Controller
from controller_adapter.embedded import EmbeddedController
from controller_adapter.embedded_etcd import EtcdEmbeddedController
from controller_adapter.openstack import OpenStackController
from doctor_common.config import Section
from doctor_common.etcd_guard import TokenGuard
from inspector.ha.etcd_config import EtcdConfig, connect
from tests.conftest import _unavailable, etcd_binary
from tests.etcd_cluster import EtcdCluster
from tests.openstack_cloud import FakeCloud

# (name, zone); (id, name, host, project, user); (id, host, project, device)
HOSTS = [("c1", "az1"), ("c2", "az1"), ("c3", "az2")]
SERVERS = [("s1", "vnf-a", "c1", "p1", "u1"), ("s2", "vnf-b", "c1", "p2", "u2"), ("s3", "vnf-c", "c2", "p1", "u1")]
PORTS = [("port-1", "c1", "p1", "s1"), ("port-2", "c1", "p2", "s2"), ("port-3", "c2", "p1", "s3")]


@dataclass
class Backend:
    """A seeded controller plus what a test needs that the interface does not offer."""

    name: str
    ctl: Controller
    set_alive: Callable[[str, bool], Awaitable[None]]  # the host's compute service stops / resumes reporting


def _inventory() -> str:
    out = [f'[[hosts]]\nname = "{n}"\nzone = "{z}"\n' for n, z in HOSTS]
    out += [f'[[servers]]\nid = "{i}"\nname = "{n}"\nhost = "{h}"\nproject_id = "{p}"\nuser_id = "{u}"\n'
            for i, n, h, p, u in SERVERS]
    out += [f'[[ports]]\nid = "{i}"\nhost = "{h}"\nproject_id = "{p}"\ndevice_id = "{d}"\n' for i, h, p, d in PORTS]
    return "".join(out)


def _section(path: Path, backend: str) -> Section:
    return Section.load(path).section("controller").section(backend)


async def _embedded(tmp_path: Path) -> tuple[Backend, Callable[[], Awaitable[None]]]:
    (tmp_path / "inventory.toml").write_text(_inventory())
    (tmp_path / "inspector.toml").write_text(
        '[controller.embedded]\ninventory = "inventory.toml"\nstate = "state/controller.db"\n')
    ctl = EmbeddedController.from_config(_section(tmp_path / "inspector.toml", "embedded"))
    return Backend("embedded", ctl, ctl.set_alive), ctl.close


async def _openstack(tmp_path: Path) -> tuple[Backend, Callable[[], Awaitable[None]]]:
    cloud = FakeCloud(compute_max="2.90").start()
    try:
        for n, z in HOSTS:
            cloud.add_host(n, zone=z)
        for i, n, h, p, u in SERVERS:
            cloud.add_server(i, name=n, host=h, project_id=p, user_id=u)
        for i, h, p, d in PORTS:
            cloud.add_port(i, host=h, project_id=p, device_id=d)
        cloud.write_clouds_yaml(tmp_path)
        (tmp_path / "inspector.toml").write_text(
            '[controller.openstack]\ncloud = "fake"\nclouds_yaml = "clouds.yaml"\ntimeout_s = 5\n')
        ctl = OpenStackController.from_config(_section(tmp_path / "inspector.toml", "openstack"))
    except BaseException:
        cloud.stop()
        raise

    async def set_alive(host: str, alive: bool) -> None:
        cloud.set_host_alive(host, alive)

    async def close() -> None:
        try:
            await ctl.close()
        finally:
            cloud.stop()
    return Backend("openstack", ctl, set_alive), close


async def _embedded_etcd(tmp_path: Path, etcd: EtcdCluster) -> tuple[Backend, Callable[[], Awaitable[None]]]:
    """The replicated mode's embedded controller: state in a real etcd, written under a leader key's token."""
    (tmp_path / "inventory.toml").write_text(_inventory())
    (tmp_path / "inspector.toml").write_text('[controller.embedded]\ninventory = "inventory.toml"\n')
    prefix = f"/contract/{tmp_path.name}"
    client = connect(EtcdConfig(endpoints=tuple(etcd.endpoints), prefix=prefix, call_timeout_s=2.0))
    t = client.transactions
    leader = f"{prefix}/leader".encode()
    _, resp = await client.transaction(compare=[t.create(leader) == 0], success=[t.put(leader, b"{}")], failure=[])
    ctl = EtcdEmbeddedController.from_config(_section(tmp_path / "inspector.toml", "embedded"))
    ctl.bind(client, prefix, TokenGuard(client, leader, resp[0].response_put.header.revision))

    async def close() -> None:
        await ctl.close()
        await client.delete_prefix(prefix.encode())
        await client.close()
    return Backend("embedded", ctl, ctl.set_alive), close


@pytest.fixture(scope="session")
def contract_etcd() -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        _unavailable("needs Debian's etcd-server (make setup installs it)")
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture(params=["embedded", "embedded-etcd", "openstack"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded-etcd":
        b, close = await _embedded_etcd(tmp_path, request.getfixturevalue("contract_etcd"))
    else:
        b, close = await {"embedded": _embedded, "openstack": _openstack}[request.param](tmp_path)
    try:
        yield b
    finally:
        await close()

"""The embedded controller's state in etcd (replicated mode): one truth for every replica, written only under
the leader's fencing token."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller_adapter.base import HostStatus, ServerState
from controller_adapter.embedded_etcd import ControllerNotLeader, EtcdEmbeddedController
from doctor_common.config import ConfigError, Section
from doctor_common.etcd_guard import NotLeader, TokenGuard
from doctor_common.lab.cloud import wait_for
from inspector.config import load_inspector_config
from inspector.ha.etcd_config import EtcdClient
from tests.etcd_cluster import EtcdCluster

INVENTORY = """
[[hosts]]
name = "c1"
[hosts.bmc]
address = "127.0.0.1"
password = "secret-bmc-password"
[[hosts]]
name = "c2"
[[servers]]
id = "s1"
host = "c1"
project_id = "p1"
[[ports]]
id = "port-1"
host = "c1"
project_id = "p1"
device_id = "s1"
"""


async def take_leader_key(client: EtcdClient, prefix: str) -> int:
    """Put (or replace) the leader key; its create revision is the new fencing token."""
    t = client.transactions
    key = f"{prefix}/leader".encode()
    await client.delete(key)
    _, resp = await client.transaction(compare=[t.create(key) == 0], success=[t.put(key, b'{"node_id": "x"}')],
                                       failure=[])
    return resp[0].response_put.header.revision


def controller(tmp_path: Path, admin: EtcdClient, prefix: str, token: int | None) -> EtcdEmbeddedController:
    inv = tmp_path / "inventory.toml"
    if not inv.exists():
        inv.write_text(INVENTORY)
    ctl = EtcdEmbeddedController(inv)
    ctl.bind(admin, prefix, TokenGuard(admin, f"{prefix}/leader".encode(), token) if token else None,
             call_timeout_s=1.0, write_deadline_s=2.0)
    return ctl


async def test_every_replica_sees_what_the_leader_wrote(
        tmp_path: Path, etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """What the leader's controller writes, a follower's (read-only) controller shows — through its watch,
    without being asked to re-read — and the BMC's password never reaches etcd."""
    token = await take_leader_key(admin, prefix)
    leader = controller(tmp_path, admin, prefix, token)
    follower = controller(tmp_path, admin, prefix, None)
    try:
        assert (await follower.get_host("c1")).status is HostStatus.UP  # loads it and starts the watch
        await leader.force_down("c1")
        await leader.reset_servers_state(["s1"], ServerState.ERROR)
        await leader.set_ports_data_plane_status(["port-1"], "DOWN")

        async def follower_sees() -> bool:
            h = await follower.get_host("c1")
            servers = await follower.servers_on_host("c1")
            ports = await follower.ports_on_host("c1")
            return (h.status is HostStatus.DOWN and servers[0].state is ServerState.ERROR
                    and ports[0].data_plane_status == "DOWN")
        await wait_for(follower_sees, 5, 0.01, "the follower's cache to follow the leader's writes")

        await leader.migrate_server("s1", "c2")
        await wait_for(lambda: follower.host_is_empty("c1"), 5, 0.01, "the move to reach the follower")
        assert [p.host for p in await follower.list_ports()] == ["c2"]

        with pytest.raises(ControllerNotLeader):
            await follower.set_disabled("c2", True, "a follower may not write")
        stored = b"".join(kv.value for kv in await admin.get_prefix(f"{prefix}/controller/".encode()))
        assert stored and b"secret-bmc-password" not in stored
    finally:
        await leader.close()
        await follower.close()


async def test_a_deposed_leaders_write_is_refused(
        tmp_path: Path, etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """After a new leader took the key, the old leader's controller cannot change anything: its write raises
    (a NotLeader, which stops the old term's work) and etcd keeps the new leader's state."""
    old = controller(tmp_path, admin, prefix, await take_leader_key(admin, prefix))
    await old.set_disabled("c2", True, "old leader")
    new_token = await take_leader_key(admin, prefix)
    new = controller(tmp_path, admin, prefix, new_token)
    try:
        await new.set_disabled("c2", False)
        with pytest.raises(NotLeader):
            await old.force_down("c2")
        with pytest.raises(ControllerNotLeader):
            await old.reset_servers_state(["s1"], ServerState.ERROR)
        fresh = controller(tmp_path, admin, prefix, None)
        try:
            host = await fresh.get_host("c2")
            assert (host.forced_down, host.disabled) == (False, False)
            assert (await fresh.servers_on_host("c1"))[0].state is ServerState.ACTIVE
        finally:
            await fresh.close()
    finally:
        await old.close()
        await new.close()


async def test_a_stale_cache_never_overwrites_a_newer_state(
        tmp_path: Path, etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """Two writers under one token (a leader's old and new controller, say): each write compares the key's
    revision, so the one whose cache is stale re-reads and keeps the other's change."""
    token = await take_leader_key(admin, prefix)
    a = controller(tmp_path, admin, prefix, token)
    b = controller(tmp_path, admin, prefix, token)
    try:
        await a.get_host("c1")
        await b.get_host("c1")
        for t in b._tasks:  # b's watch stops: its cache goes stale on purpose
            t.cancel()
        await a.set_disabled("c1", True, "maintenance by a")
        await b.force_down("c1")  # b still believes c1 is enabled
        await a.sync()
        host = await a.get_host("c1")
        assert (host.disabled, host.disabled_reason, host.forced_down) == (True, "maintenance by a", True)
    finally:
        await a.close()
        await b.close()


async def test_state_survives_a_restart_and_an_inventory_reload(
        tmp_path: Path, etcd1: EtcdCluster, admin: EtcdClient, prefix: str) -> None:
    """A new controller (a restarted replica) reads the state etcd holds; an inventory that gains a host and
    changes a zone takes effect on reload, and the state already written stays."""
    token = await take_leader_key(admin, prefix)
    first = controller(tmp_path, admin, prefix, token)
    await first.force_down("c1")
    await first.close()
    (tmp_path / "inventory.toml").write_text(INVENTORY.replace('name = "c2"', 'name = "c2"\nzone = "az9"')
                                            + '[[hosts]]\nname = "c3"\n')
    second = controller(tmp_path, admin, prefix, token)
    try:
        assert (await second.get_host("c1")).forced_down
        assert [h.name for h in await second.list_hosts()] == ["c1", "c2", "c3"]
        assert (await second.get_host("c2")).zone == "az9"
    finally:
        await second.close()


def test_a_state_file_with_etcd_is_refused(tmp_path: Path) -> None:
    """With [etcd], ``controller.embedded.state`` would be a second truth per replica: start-up refuses it,
    naming the file and the key."""
    (tmp_path / "inventory.toml").write_text(INVENTORY)
    cfg = tmp_path / "inspector.toml"
    cfg.write_text('[inspector]\nlisten = ["127.0.0.1:50051"]\nadvertise = "127.0.0.1:50051"\n'
                   '[controller.embedded]\ninventory = "inventory.toml"\nstate = "state.sqlite"\n'
                   '[etcd]\nendpoints = ["127.0.0.1:2379"]\n')
    with pytest.raises(ConfigError) as err:
        load_inspector_config(cfg)
    assert "state" in str(err.value) and "inspector.toml" in str(err.value) and "etcd" in str(err.value)
    cfg.write_text(cfg.read_text().replace('state = "state.sqlite"\n', ''))
    assert isinstance(load_inspector_config(cfg).controller, EtcdEmbeddedController)
    assert Section.load(cfg).data["controller"]["embedded"] == {"inventory": "inventory.toml"}

"""The embedded controller keeps its state across a restart."""

from pathlib import Path

from controller_adapter.base import HostStatus, ServerState
from controller_adapter.embedded import EmbeddedController

INV = ('[[hosts]]\nname = "c1"\n[[hosts]]\nname = "c2"\n'
       '[[servers]]\nid = "s1"\nhost = "c1"\nproject_id = "p"\n'
       '[[ports]]\nid = "port1"\nhost = "c1"\nproject_id = "p"\ndevice_id = "s1"\n')


async def test_state_survives_restart_and_inventory_adds_new_things(tmp_path: Path) -> None:
    """Forced down, server error and port status persist; a server added to the inventory later appears."""
    inv, db = tmp_path / "inv.toml", tmp_path / "state.sqlite"
    inv.write_text(INV)
    c = EmbeddedController(inv, db)
    await c.force_down("c1")
    assert await c.reset_servers_state(["s1"], ServerState.ERROR) == {}
    assert await c.set_ports_data_plane_status(["port1"], "DOWN") == {}
    await c.close()
    inv.write_text(INV + '[[servers]]\nid = "s2"\nhost = "c2"\nproject_id = "q"\n')
    c = EmbeddedController(inv, db)
    try:
        assert await c.server_host_status("s1") == ("c1", HostStatus.DOWN)
        assert [s.state for s in await c.servers_on_host("c1")] == [ServerState.ERROR]
        assert (await c.ports_on_host("c1"))[0].data_plane_status == "DOWN"
        assert [s.id for s in await c.list_servers("q")] == ["s2"]
    finally:
        await c.close()


async def test_topology_comes_from_the_inventory_also_for_an_older_state_file(tmp_path: Path) -> None:
    """Each host's zone and switch are read from the inventory; a state file written before hosts had a switch
    is upgraded in place, keeping its state."""
    import sqlite3

    inv, db = tmp_path / "inv.toml", tmp_path / "state.sqlite"
    old = sqlite3.connect(db)
    old.executescript("CREATE TABLE hosts (name TEXT PRIMARY KEY, zone TEXT NOT NULL DEFAULT '', bmc TEXT, "
                      "forced_down INTEGER NOT NULL DEFAULT 0, disabled INTEGER NOT NULL DEFAULT 0, "
                      "disabled_reason TEXT NOT NULL DEFAULT '', alive INTEGER NOT NULL DEFAULT 1);"
                      "INSERT INTO hosts(name, forced_down) VALUES ('c1', 1);")
    old.close()
    inv.write_text('[[hosts]]\nname = "c1"\nzone = "az1"\nswitch = "tor-1"\n[[hosts]]\nname = "c2"\nzone = "az2"\n')
    c = EmbeddedController(inv, db)
    try:
        hosts = {h.name: h for h in await c.list_hosts()}
        assert (hosts["c1"].zone, hosts["c1"].switch, hosts["c1"].forced_down) == ("az1", "tor-1", True)
        assert (hosts["c2"].zone, hosts["c2"].switch) == ("az2", "")
    finally:
        await c.close()


async def test_a_server_names_its_libvirt_domain(tmp_path: Path) -> None:
    """An inventory server may name its libvirt domain: the resource map finds it by that name or by its id
    (a domain's uuid is Nova's instance id), on its own host only."""
    from inspector.response.correlate import ResourceMap

    inv = tmp_path / "inv.toml"
    inv.write_text('[[hosts]]\nname = "c1"\n[[hosts]]\nname = "c2"\n'
                   '[[servers]]\nid = "s1"\nhost = "c1"\nproject_id = "p"\ndomain = "instance-0001"\n'
                   '[[servers]]\nid = "s2"\nhost = "c1"\nproject_id = "q"\n')
    c = EmbeddedController(inv, tmp_path / "state.sqlite")
    try:
        rm = ResourceMap(c)
        await rm.load()
        s1 = rm.server_of("c1", domain="instance-0001")
        assert s1 is not None and s1.id == "s1" and s1.domain == "instance-0001"
        assert rm.server_of("c1", uuid="S2") is not None and rm.server_of("c2", domain="instance-0001") is None
    finally:
        await c.close()

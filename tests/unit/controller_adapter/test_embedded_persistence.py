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

"""An administrator can subscribe during a mass failure (issue 12, item 10): the snapshot comes in parts."""

from __future__ import annotations

from pathlib import Path

from doctor_common.api import common_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import free_port
from inspector.config import load_inspector_config
from inspector.core import Inspector
from inspector.response.trigger import Trigger

HOSTS = 4500


async def test_an_administrators_snapshot_of_thousands_of_alarms_arrives_whole(tmp_path: Path) -> None:
    """4,500 hosts, each with a server and an active alarm: the administrator's snapshot (well over gRPC's
    4 MiB message limit in one piece) arrives in parts of at most about 1 MiB, and holds every host and every
    server once."""
    inventory = "".join(f'[[hosts]]\nname = "h{i}"\n[[servers]]\nid = "s{i}"\nhost = "h{i}"\nproject_id = "p"\n'
                        for i in range(HOSTS))
    (tmp_path / "inventory.toml").write_text(inventory)
    port = free_port()
    (tmp_path / "inspector.toml").write_text(
        f'[inspector]\nlisten = ["127.0.0.1:{port}"]\nlog_level = "warning"\n'
        '[controller.embedded]\ninventory = "inventory.toml"\n'
        '[[auth.consumers]]\nname = "noc"\nadmin = true\ntoken = "admin-token"\n')
    inspector = Inspector(load_inspector_config(tmp_path / "inspector.toml"))
    await inspector.start()
    try:
        cause = "a fan slower than its lower threshold for the last ten minutes; " * 10
        for i in range(HOSTS):
            await inspector.responder.fault(Trigger(f"h{i}", "compute.host.ipmi.fan", common_pb2.SEVERITY_WARNING,
                                                    component="ipmi:FAN1", description=cause))
        assert len(inspector.alarms) == HOSTS
        parts = []
        async with DoctorClient(f"127.0.0.1:{port}", "admin-token") as admin:
            async for msg in admin.subscribe_once():
                assert msg.WhichOneof("kind") == "subscribed"
                parts.append(msg.subscribed)
                if not msg.subscribed.more:
                    break
        assert sum(p.ByteSize() for p in parts) > 4 * 1024 * 1024, "the test must exceed one message's limit"
        assert len(parts) > 4 and all(p.ByteSize() <= 1024 * 1024 + 64 * 1024 for p in parts)
        assert len({p.subscription_id for p in parts}) == 1
        hosts = [h.physical_resource_id for p in parts for h in p.physical_resource_info]
        servers = [v.virtual_resource_id for p in parts for v in p.virtual_resource_info]
        assert sorted(hosts) == sorted(f"h{i}" for i in range(HOSTS)) and len(set(servers)) == HOSTS == len(servers)
        assert all(h.faults for p in parts for h in p.physical_resource_info)
    finally:
        await inspector.stop(0.2)

"""A maintenance session with ``backend = "openstack"``: the test cloud records the disable, each migration
(live and cold, through openstacksdk) and the enable, and Nova's own view says where the servers went."""

from __future__ import annotations

from typing import Any

from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from tests.integration.maintenance.conftest import Owner, Progress
from tests.integration.test_fault_chain_openstack import OpenStackLab, api_calls
from tests.openstack_cloud import FakeCloud

S = mpb.SessionState


async def test_a_session_through_nova(tmp_path: Any) -> None:
    cloud = FakeCloud(compute_max="2.90").start()
    lab = OpenStackLab(cloud, hosts=3, servers_per_host=2, netns=False)
    owners: list[Owner] = []
    admin = DoctorClient(lab.endpoint, lab.tokens["admin"])
    try:
        await lab.start(agents=False)
        a, b = await Owner(lab, "project-a").start(), await Owner(lab, "project-b").start()
        owners += [a, b]
        progress = Progress(admin.maintenance_start(["compute-1"], reason="kernel 6.12"))
        sid = await progress.first()
        await a.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
        await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
        await a.client.reply(sid, {"vm-1-1": (mpb.INSTRUCTION_LIVE_MIGRATE, "compute-3")})
        await b.client.reply(sid, {"vm-1-2": mpb.INSTRUCTION_MIGRATE})
        done = await progress.end()
        assert done.state == S.SESSION_STATE_IN_MAINTENANCE, done.detail

        disabled = [r for r in api_calls(cloud, "PUT", r"/os-services/") if r.body.get("status") == "disabled"]
        assert len(disabled) == 1 and disabled[0].body["disabled_reason"].startswith(f"nfv-doctor maintenance {sid}")
        actions = sorted((r.path.split("/")[-2], next(iter(r.body)))
                         for r in api_calls(cloud, "POST", r"/servers/.*/action"))
        assert actions == [("vm-1-1", "os-migrateLive"), ("vm-1-2", "confirmResize"), ("vm-1-2", "migrate")], \
            "each server moved once, as asked; the cold migration confirmed"
        assert cloud.server("vm-1-1").host == "compute-3" and cloud.server("vm-1-2").host != "compute-1"

        ended = [m async for m in admin.maintenance_end(["compute-1"], force=True)]
        assert ended[-1].session.state == S.SESSION_STATE_COMPLETED
        enabled = [r for r in api_calls(cloud, "PUT", r"/os-services/") if r.body.get("status") == "enabled"]
        assert len(enabled) == 1
        assert not api_calls(cloud, "PUT", r"/os-services/.*force") and all(
            "forced_down" not in r.body for r in api_calls(cloud, "PUT", r"/os-services/")), "nothing forced down"
    finally:
        for o in owners:
            await o.close()
        await admin.close()
        await lab.close()
        cloud.stop()

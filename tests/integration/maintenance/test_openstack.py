"""A maintenance session with ``backend = "openstack"``: the test cloud records the disable, each migration
(live and cold, through openstacksdk) and the enable, and Nova's own view says where the servers went."""

from __future__ import annotations

import asyncio
from typing import Any

from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from tests.integration.maintenance.conftest import Owner, Progress
from tests.integration.test_fault_chain_openstack import OpenStackLab, api_calls
from tests.openstack_cloud import FakeCloud

S = mpb.SessionState
DURABLE = '[notifier]\nstate = "notifications.sqlite"\n'  # maintenance needs state that outlives the process


async def test_a_session_through_nova(tmp_path: Any) -> None:
    cloud = FakeCloud(compute_max="2.90").start()
    lab = OpenStackLab(cloud, hosts=3, servers_per_host=2, netns=False)
    lab.extra_config += DURABLE
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


async def test_a_migration_nova_fails_rolls_the_session_back_at_once(tmp_path: Any) -> None:
    """Nova accepts vm-1-1's live migration, then reports it failed: the session rolls back without waiting for
    its deadline, the compute service is enabled again, and the owner is told vm-1-1 is still on compute-1."""
    cloud = FakeCloud(compute_max="2.90", instant_migrations=False).start()
    lab = OpenStackLab(cloud, hosts=3, servers_per_host=1, netns=False)
    lab.extra_config += DURABLE
    admin = DoctorClient(lab.endpoint, lab.tokens["admin"])
    owner: Owner | None = None
    try:
        await lab.start(agents=False)
        owner = await Owner(lab, "project-a").start()
        progress = Progress(admin.maintenance_start(["compute-1"]))
        sid = await progress.first()
        await owner.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
        await owner.client.reply(sid, {"vm-1-1": mpb.INSTRUCTION_LIVE_MIGRATE})
        await wait_for(lambda: any(m.status == "running" for m in cloud.migrations()), 10, 0.01,
                       "Nova's migration to start")
        assert cloud.fail_migrations() == 1
        done = await asyncio.wait_for(progress.end(), 5)
        assert done.state == S.SESSION_STATE_ROLLED_BACK and "failed: Nova's migration" in done.detail
        assert not cloud.service("compute-1").disabled
        told = await owner.notice(sid, S.SESSION_STATE_ROLLED_BACK)
        assert told.servers[0].host == "compute-1" and told.servers[0].error
    finally:
        if owner is not None:
            await owner.close()
        await admin.close()
        await lab.close()
        cloud.stop()


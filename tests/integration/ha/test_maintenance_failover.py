"""A maintenance session survives its leader: SIGKILLed right after asking the controller to move a server,
the next leader finishes the session from its journal in etcd, and nothing happens twice."""

from __future__ import annotations

import asyncio
from typing import Any

from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from inspector.ha.etcd_config import EtcdConfig, connect
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import read_log

S = mpb.SessionState


async def test_leader_killed_mid_move_the_next_one_finishes_the_session_once(
        ha: Any, shared_etcd: EtcdCluster, needs_root: None) -> None:
    """Replica 0 leads and dies (SIGKILL) just after the first server's move was made in the controller (etcd).
    Replica 1 takes over, sees that move done (not asked again: the server's state key was written once),
    makes the other, and brings compute-1 into maintenance. The owners' notices are each in the log once;
    the administrator follows the session at the new leader with Watch, and the progress stream begun at the
    dead leader (a client given both replicas) carries on there by itself to the same end."""
    lab = await ha(shared_etcd, first_env={"DOCTOR_TEST_CRASH_AT": "maintenance_moving"}, hosts=3,
                   projects=("project-a", "project-b"))
    admin = DoctorClient(lab.endpoints, lab.tokens["admin"])
    owners = {p: DoctorClient(lab.endpoints, lab.tokens[p]) for p in ("project-a", "project-b")}
    try:
        stream = admin.maintenance_start(["compute-1"], reason="firmware", reply_timeout_s=30)
        first = await stream.__anext__()
        sid = first.session.session_id

        async def asked() -> bool:
            q = await admin.maintenance_query(["compute-1"])
            return q.physical_resource_info[0].session.state == S.SESSION_STATE_OWNERS_NOTIFIED
        await wait_for(asked, 10, 0.02, "the owners to be asked")
        servers = {o.server_id: o.project_id for o in
                   (await admin.maintenance_query(["compute-1"])).physical_resource_info[0].session.servers}
        for project, client in owners.items():
            await client.reply(sid, {s: mpb.INSTRUCTION_LIVE_MIGRATE for s, p in servers.items() if p == project})

        proc = lab.replicas[0].proc
        assert proc is not None
        await wait_for(lambda: proc.returncode is not None, 10, 0.01, "the leader to kill itself mid-move")
        assert "TEST HOOK: SIGKILL at maintenance_moving" in lab.replica_log(0)
        assert await lab.wait_leader(exclude=(0,)) == 1

        async with DoctorClient(lab.replicas[1].endpoint, lab.tokens["admin"]) as a1:
            async def followed() -> list[mpb.MaintenanceProgress]:
                return [m async for m in a1.maintenance_watch(sid)]
            events = await asyncio.wait_for(followed(), 20)
            final = events[-1].session
            assert final.state == S.SESSION_STATE_IN_MAINTENANCE, final
            assert all(o.done and o.host not in ("", "compute-1") for o in final.servers)
            assert "carrying on from" in lab.replica_log(1)

        async def rest() -> list[mpb.MaintenanceProgress]:
            return [m async for m in stream]
        # the administrator's first stream, begun at the dead leader, goes on by itself with Watch at the new one
        resumed = (await asyncio.wait_for(rest(), 20))[-1].session
        assert (resumed.session_id, resumed.state) == (sid, S.SESSION_STATE_IN_MAINTENANCE), resumed

        log = await read_log(lab)
        notices = [n.maintenance.state for n in log if n.HasField("maintenance") and n.maintenance.session_id == sid]
        assert notices == [S.SESSION_STATE_OWNERS_NOTIFIED, S.SESSION_STATE_IN_MAINTENANCE], "each notice once"
        async with connect(EtcdConfig(endpoints=tuple(lab.etcd_endpoints), prefix=lab.prefix)) as c:
            for server in servers:
                kv = await c.get(f"{lab.prefix}/controller/server/{server}".encode())
                assert kv is not None and kv.version == 1, f"{server} was moved exactly once"
        assert all(lab.power(h)[1] == 0 for h in lab.hosts), "nothing powered off"
    finally:
        for c in (admin, *owners.values()):
            await c.close()

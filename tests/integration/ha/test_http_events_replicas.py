"""Monitors' events over HTTP with replicas: every replica listens; a follower answers 503 naming the leader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from doctor_common.lab.cloud import free_port, wait_for
from doctor_common.lab.replicated import HaLab
from tests.etcd_cluster import EtcdCluster
from tests.integration.ha.conftest import read_log


class HttpHaLab(HaLab):
    """Each replica with ``[http_events]`` on a loopback port of its own."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.http_ports = [free_port() for _ in self.replicas]

    def write_files(self) -> Path:
        first = super().write_files()
        for r, port in zip(self.replicas, self.http_ports):
            with r.config.open("a") as f:  # a table of its own, after [[auth.agents]]: TOML allows it
                f.write(f'\n[http_events]\nlisten = "127.0.0.1:{port}"\n')
        return first


async def put(port: int, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as s, s.put(f"http://127.0.0.1:{port}/events", data=json.dumps(body),
                                                   headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(), r.headers.get("Retry-After", "")


async def test_a_follower_sends_the_monitor_to_the_leader_which_takes_the_event(shared_etcd: EtcdCluster) -> None:
    """Two replicas: the follower answers a monitor's PUT with 503, Retry-After and the leader's agent endpoint,
    and logs nothing; the leader answers 200 and its notification is in the shared log."""
    lab = HttpHaLab(shared_etcd.endpoints, replicas=2, hosts=2, netns=False)
    try:
        await lab.start(agents=False)
        leader = await lab.wait_leader()
        follower = 1 - leader
        token = lab.hosts["compute-1"].agent_token
        event = {"event": {"time": "2026-12-03T09:00:00Z", "type": "compute.host.sensor.warning",
                           "details": {"hostname": "compute-1", "severity": "warning", "monitor_id": "m-http"}}}

        status, answer, retry = await put(lab.http_ports[follower], token, event)
        assert status == 503 and retry == "1"
        assert answer["leader"] == f"unix:{lab.replicas[leader].socket}" and "not the leader" in answer["error"]

        assert (await put(lab.http_ports[leader], token, event))[:2] == (200, {"accepted": 1})

        async def logged() -> list[str] | None:
            found = [f.fault_details.get("monitor_id", "") for n in await read_log(lab)
                     for p in n.physical_resource_info for f in p.faults]
            return found or None
        assert await wait_for(logged, 10, 0.05, "the leader's notification") == ["m-http"]
    finally:
        await lab.close()

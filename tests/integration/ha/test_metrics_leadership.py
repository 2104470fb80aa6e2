"""Leadership as the replicas' metrics say it: real replica processes campaigning in a real etcd."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from doctor_common.lab.cloud import wait_for
from doctor_common.lab.replicated import HaLab
from tests.etcd_cluster import EtcdCluster


def metrics_port(lab: HaLab, i: int) -> int:
    """The port replica ``i`` bound for [metrics] listen = 127.0.0.1:0, as its log says."""
    found = re.findall(r"metrics served on http://127\.0\.0\.1:(\d+)/metrics", lab.replica_log(i))
    assert len(found) == 1, lab.replica_log(i)[-2000:]
    return int(found[0])


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def test_the_leader_gauge_and_term_follow_a_failover(ha: Any, shared_etcd: EtcdCluster) -> None:
    """Two replicas: the leader says 1, the follower 0, both name the same term (the leader key's create
    revision) and count their etcd calls. The leader killed, the other says 1 with a newer term."""
    lab = await ha(shared_etcd, agents=False, netns=False, hosts=1, replicas=2,
                   extra_config='[metrics]\nlisten = "127.0.0.1:0"\n')
    assert await lab.wait_leader() == 0
    ports = [metrics_port(lab, i) for i in range(2)]

    async def settled() -> tuple[dict[Any, float], dict[Any, float]] | None:
        a, b = await scrape(ports[0]), await scrape(ports[1])
        token = a[("doctor_inspector_leader_token", ())]
        return (a, b) if token > 0 and b[("doctor_inspector_leader_token", ())] == token else None
    leader, follower = await wait_for(settled, 10, 0.05, "both replicas to know the term")
    assert leader[("doctor_inspector_leader", ())] == 1 and follower[("doctor_inspector_leader", ())] == 0
    roles = {dict(labels)["node_id"]: dict(labels)["role"] for (name, labels), _ in [*leader.items(), *follower.items()]
             if name == "doctor_inspector_info"}
    assert roles == {"replica-0": "leader", "replica-1": "follower"}
    term = leader[("doctor_inspector_leader_token", ())]
    assert leader[("doctor_etcd_call_seconds_count", (("call", "transaction"),))] >= 1, "the campaign's transaction"
    assert follower[("doctor_etcd_call_seconds_count", (("call", "get"),))] >= 1, "the follower reads the leader key"

    await lab.kill_replica(0)
    assert await lab.wait_leader(exclude=(0,)) == 1

    async def took_over() -> dict[Any, float] | None:
        b = await scrape(ports[1])
        return b if b[("doctor_inspector_leader", ())] == 1 else None
    after = await wait_for(took_over, 10, 0.05, "the survivor to say it leads")
    assert after[("doctor_inspector_leader_token", ())] > term, "a new term has a newer token"

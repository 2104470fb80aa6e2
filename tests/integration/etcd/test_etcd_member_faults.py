"""Leadership and fenced writes while etcd members die (a 3-member cluster of the test's own)."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from doctor_common.etcd_guard import NotLeader
from inspector.ha.election import Election
from inspector.ha.etcd_config import connect
from inspector.ha.etcd_store import EtcdStore
from tests.etcd_cluster import EtcdCluster
from tests.integration.etcd.conftest import keys_under, make_config
from tests.integration.etcd.test_etcd_election import first_leader


@pytest.mark.parametrize("victim", ["follower", "raft_leader"])
async def test_losing_one_member_of_three_interrupts_neither_leadership_nor_writes(
        etcd3: EtcdCluster, prefix: str, victim: str) -> None:
    """SIGKILL one etcd member (a raft follower, or etcd's raft leader) while the leader writes every 20 ms:
    the term survives and every fenced write succeeds (the raft leader's loss only delays writes)."""
    ttl = 1 if victim == "follower" else 2  # TTL 1 cannot always absorb a raft election + the 1/4-TTL renew period
    cfg = make_config(etcd3, prefix, lease_ttl_s=ttl)
    async with connect(cfg) as client:
        election = Election(client, cfg, node_id="a", endpoint="a:1")
        election.start()
        try:
            term = await election.wait_leader(timeout=5)
            store = EtcdStore(client, prefix, election, write_deadline_s=cfg.write_deadline_s)
            raft_leader = etcd3.leader()
            index = raft_leader if victim == "raft_leader" else (raft_leader + 1) % 3
            latencies: list[float] = []
            killed_at = 0.0
            for n in range(1000):  # bounded; ends 2.5 s after the kill
                if n == 10:
                    etcd3.kill(index)
                    killed_at = time.monotonic()
                t = time.monotonic()
                await store.put("counter", str(n).encode())
                latencies.append(time.monotonic() - t)
                if killed_at and time.monotonic() - killed_at > 2.5:
                    break
                await asyncio.sleep(0.02)
            assert election.term is term and term.valid, f"leadership was interrupted: {term.reason}"
            assert await store.get("counter") == str(n).encode()
            assert max(latencies) < cfg.call_timeout_s + 1.0, f"slowest write {max(latencies):.2f}s"
            print(f"victim={victim}: {len(latencies)} writes, slowest {max(latencies) * 1000:.0f} ms, "
                  f"lease renewed until +{term.renewed_until - time.monotonic():.2f}s")
        finally:
            await election.close()


async def test_quorum_loss_makes_the_leader_step_down_before_its_lease_can_expire(
        etcd3: EtcdCluster, prefix: str) -> None:
    """Kill two of three members: the leader steps down before the earliest moment its lease could expire, acts no
    more (fenced writes refused locally, at once), nobody leads during the outage, and someone leads again once
    quorum is back."""
    cfg = make_config(etcd3, prefix)
    async with AsyncExitStack() as stack:
        elections, stores = [], {}
        for node in ("a", "b"):
            client = await stack.enter_async_context(connect(cfg))
            e = Election(client, cfg, node_id=node, endpoint=f"{node}:1")
            stack.push_async_callback(e.close)
            e.start()
            elections.append(e)
            stores[node] = EtcdStore(client, prefix, e, write_deadline_s=cfg.write_deadline_s)
        leader = await first_leader(elections)
        term = leader.current_term()
        await stores[leader.node_id].put("before", b"1")

        victims = [i for i in range(3) if i != 0][:2]
        for i in victims:
            etcd3.kill(i)
        await asyncio.wait_for(term.lost.wait(), term.granted_ttl + 1.0)
        assert term.lost_at is not None and term.lost_at < term.renewed_until, \
            f"stepped down {term.lost_at - term.renewed_until:.3f}s after the lease could have expired"
        assert term.renewed_until - term.lost_at >= term.margin - 0.05  # the timer, not a late failure, ended it
        assert not term.definitive  # etcd never said the lease was gone: it was unreachable
        t = time.monotonic()
        with pytest.raises(NotLeader):
            await stores[leader.node_id].put("during", b"1")
        assert time.monotonic() - t < 0.05, "a stepped-down leader must refuse locally, not wait for etcd"
        assert not any(e.is_leader for e in elections)

        back = time.monotonic()
        for i in victims:
            etcd3.restart(i, wait=False)
        etcd3.wait_healthy(timeout_s=10)
        nxt = await first_leader(elections, timeout=10)
        await stores[nxt.node_id].put("after", b"1")
        back = time.monotonic() - back
        assert [e.is_leader for e in elections].count(True) == 1
        print(f"step-down {term.renewed_until - term.lost_at:.3f}s before the lease could expire; "
              f"{back:.2f}s after restarting the members {nxt.node_id} leads with token {nxt.token} "
              f"(old {term.token}) and has written")
        other = next(e for e in elections if e is not nxt)
        with pytest.raises(NotLeader):
            await stores[other.node_id].put("x", b"")
        for e in elections:
            await e.close()
        async with connect(cfg) as admin:
            assert await keys_under(admin, prefix) == ["state/after", "state/before"]

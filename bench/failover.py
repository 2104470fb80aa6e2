"""Leader failover through etcd: SIGKILL the leading inspector candidate, time until another leads and writes.

Starts its own etcd cluster (3 members on loopback) and 3 candidate processes
(``tests/integration/etcd/candidate.py``: the real ``Election``, ``EtcdStore``
and ``EtcdLog``). The leader appends a notification to the etcd log every
10 ms. Each run SIGKILLs the leader and measures until another candidate has
won and completed a fenced write; a fresh candidate then replaces the dead one.
The kill comes at a random moment after the leader took over (uniform over
half a TTL, i.e. two renewal periods) so the renewal phase is sampled fairly.
At the end the log is read back: every acknowledged append must be there, at
its number, once (``lost_notifications``), with no gap or duplicate.

Two configurations: the default (etcd's default timing, lease TTL 2 s) and the
fast one the tests use (heartbeat 50 ms, election 250 ms, TTL 1 s).

    python bench/failover.py            # 10 runs of each
    python bench/failover.py --quick    # 4 runs of each, well within a minute

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/ holds the fixtures

from inspector.etcd_config import EtcdConfig, connect  # noqa: E402
from notifier.etcd_log import EtcdLog  # noqa: E402
from tests.etcd_cluster import EtcdCluster  # noqa: E402
from tests.integration.etcd.candidate import Candidate  # noqa: E402


async def leader_of(cands: list[Candidate], after: float, timeout: float) -> tuple[Candidate, dict[str, Any]]:
    waits = {asyncio.create_task(c.wait_event(lambda e: e["event"] == "wrote" and e["t"] > after, timeout)): c
             for c in cands if c.running}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        return waits[task], task.result()
    finally:
        for t in waits:
            t.cancel()


async def appended(c: Candidate, n: int, timeout: float) -> None:
    await c.wait_event(lambda e: sum(x["event"] == "appended" for x in c.events) >= n, timeout)


async def scenario(*, fast: bool, ttl: int, runs: int, rng: random.Random) -> dict[str, Any]:
    prefix = f"/nfv-doctor-bench/failover-{uuid.uuid4().hex[:8]}"
    with EtcdCluster(3, fast=fast) as cluster:
        margin = 0.2
        kw = dict(ttl=ttl, margin=margin, call_timeout=1.0 if fast else 2.5, append_every_ms=10)
        cands: list[Candidate] = []
        dead: list[Candidate] = []
        try:
            for i in range(3):
                cands.append(await Candidate(cluster.endpoints, prefix, f"c{i}", **kw).start())
            leader, _ = await leader_of(cands, 0.0, timeout=30)
            takeovers: list[float] = []
            for run in range(runs):
                await appended(leader, 5, timeout=10)
                # kill at a random phase of the lease renewal (every TTL/4): killing right after taking over
                # would always measure the worst case
                await asyncio.sleep(rng.uniform(0, ttl / 2))
                old_token = leader.last("leader")["token"]  # type: ignore[index]
                killed_at = await leader.kill()
                cands.remove(leader)
                dead.append(leader)
                leader, wrote = await leader_of(cands, killed_at, timeout=ttl + 10)
                takeovers.append(wrote["t"] - killed_at)
                print(f"  run {run + 1}: {takeovers[-1]:.3f} s to a fenced write by {leader.node_id} "
                      f"(token {old_token} -> {leader.last('leader')['token']})", flush=True)  # type: ignore[index]
                cands.append(await Candidate(cluster.endpoints, prefix, f"c{3 + run}", **kw).start())
            await appended(leader, 5, timeout=10)
        finally:
            for c in cands:
                await c.stop()
        everyone = cands + dead
        cfg = EtcdConfig(endpoints=tuple(cluster.endpoints), prefix=prefix)
        async with connect(cfg) as client:
            entries = await EtcdLog(client, prefix).read(0, 10**9)
            await client.delete_prefix(prefix.encode())
    seqs = [n.sequence for n in entries]
    ids = [n.notification_id for n in entries]
    acked = {e["id"]: e["seq"] for c in everyone for e in c.events if e["event"] == "appended"}
    where = {n.notification_id: n.sequence for n in entries}
    lost = sum(1 for i, s in acked.items() if where.get(i) != s)
    granted = {e["ttl"] for c in everyone for e in c.events if e["event"] == "leader"}  # etcd may raise the TTL
    return {
        "ttl_s": max(granted), "etcd_timing": "fast (heartbeat 50 ms, election 250 ms)" if fast else "default",
        "runs": len(takeovers), "median_s": round(statistics.median(takeovers), 3),
        "max_s": round(max(takeovers), 3), "min_s": round(min(takeovers), 3),
        "appended": len(acked), "lost_notifications": lost,
        "in_flight_at_kill_stored": len(set(ids) - set(acked)),
        "gaps": sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1) + (1 if seqs and seqs[0] != 1 else 0),
        "duplicates": len(ids) - len(set(ids)),
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 runs per configuration (within a minute)")
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--seed", type=int, default=1, help="of the random kill moments")
    args = p.parse_args()
    rng = random.Random(args.seed)
    runs = args.runs or (4 if args.quick else 10)
    results = []
    for fast, ttl in ((False, 2), (True, 1)):
        label = "fast etcd timing, TTL 1" if fast else "default etcd timing, TTL 2"
        print(f"{label}: {runs} failovers (SIGKILL the leader process)", flush=True)
        r = await scenario(fast=fast, ttl=ttl, runs=runs, rng=rng)
        print(f"  median {r['median_s']:.3f} s, max {r['max_s']:.3f} s; {r['appended']} notifications appended, "
              f"{r['lost_notifications']} lost, {r['gaps']} gaps, {r['duplicates']} duplicates", flush=True)
        results.append(r)
    default, fast_ = results
    print(json.dumps({"bench": "failover", "runs": default["runs"], "ttl_s": default["ttl_s"],
                      "median_s": default["median_s"], "max_s": default["max_s"],
                      "lost_notifications": default["lost_notifications"] + fast_["lost_notifications"],
                      "gaps": default["gaps"] + fast_["gaps"], "duplicates": default["duplicates"] + fast_["duplicates"],
                      "default": default, "fast": fast_}))


if __name__ == "__main__":
    asyncio.run(main())

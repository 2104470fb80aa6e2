"""Leader failover through etcd: SIGKILL the leading inspector, time until another leads and everyone follows.

Phase 1, election only: an etcd cluster (3 members on loopback) and 3
candidate processes (``tests/integration/etcd/candidate.py``: the real
``Election``, ``EtcdStore`` and ``EtcdLog``). The leader appends a
notification every 10 ms. Each run SIGKILLs it and measures until another
candidate has won and completed a fenced write.

Phase 2, the whole system (``doctor_common/lab/replicated.py``): 3 ``doctor-inspector``
replica processes, 3 agent processes (one per host, listing every replica),
4 consumers (``DoctorClient.subscribe`` with every replica's address) and a
monitor reporting a sensor warning every 20 ms through ``ReportJson`` to
whoever leads (one notification each). Each run SIGKILLs the leader and
measures until (a) another replica acts as leader (its state loaded from
etcd), (b) every agent is connected to it, (c) every consumer has
re-subscribed to it; "all" is the last of the three. The killed replica is
restarted before the next run. At the end each consumer's notifications are
compared with the etcd log: every one it may see, once, in order
(``lost_notifications``, gaps, duplicates). Agents and consumers cap their
reconnect backoff at ``--backoff`` seconds (default 2, the agent's and
``DoctorClient``'s own default): while nobody leads they retry with a growing
backoff, so the cap bounds how long after the new leader they are back.

In both phases the kill comes at a random moment (uniform over half a TTL,
i.e. two lease renewal periods) so the renewal phase is sampled fairly. Two
configurations: etcd's default timing with the default lease TTL (2 s), and
the fast timing the tests use (heartbeat 50 ms, election 250 ms) with TTL 1 s.

    python bench/failover.py            # 10 + 6 runs of each
    python bench/failover.py --quick    # 4 + 3 runs of each, about a minute

The last line printed is one JSON object: ``median_s``/``max_s`` are phase 2's
"all" with the default TTL; ``lost_notifications`` counts both phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/ holds the fixtures

import grpc  # noqa: E402

from doctor_common.api import agent_pb2, agent_pb2_grpc, fault_pb2  # noqa: E402
from doctor_common.auth import Principal  # noqa: E402
from doctor_common.client import DoctorClient, leader_hint  # noqa: E402
from doctor_common.grpcutil import auth_metadata  # noqa: E402
from doctor_common.lab.cloud import wait_for  # noqa: E402
from doctor_common.lab.replicated import HaLab  # noqa: E402
from inspector.ha.etcd_config import EtcdConfig, connect  # noqa: E402
from notifier.etcd_log import EtcdLog  # noqa: E402
from notifier.filters import Filter, view_notification  # noqa: E402
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


class Watcher:
    """A consumer with every replica's address; notes when each (re)subscription was answered."""

    def __init__(self, lab: HaLab, who: str, backoff: float) -> None:
        self.who, self.client, self.backoff = who, DoctorClient(lab.endpoints, lab.tokens[who]), backoff
        self.subscribed_at: list[float] = []
        self.first: fault_pb2.SubscribeResponse | None = None
        self.seqs: list[int] = []

    async def run(self) -> None:
        async for msg in self.client.subscribe(max_backoff_s=self.backoff):
            if msg.WhichOneof("kind") == "subscribed":
                self.subscribed_at.append(time.monotonic())
                self.first = self.first or msg.subscribed
            else:
                self.seqs.append(msg.fault.sequence)


async def monitor(lab: HaLab, stop: asyncio.Event) -> int:
    """A sensor on compute-1 going bad and back every 20 ms (one notification each), sent to whoever leads."""
    md, target, k = auth_metadata(lab.hosts["compute-1"].agent_token), lab.endpoints[0], 0
    chans = {ep: grpc.aio.insecure_channel(ep) for ep in lab.endpoints}
    try:
        while not stop.is_set():
            details = {"hostname": "compute-1", "severity": "warning", "monitor_id": f"m{k // 2 % 5}",
                       "status": "down" if k % 2 == 0 else "up"}
            report = json.dumps({"event": {"time": "2026-01-01T00:00:00Z", "type": "compute.host.sensor.warning",
                                           "details": details}})
            try:
                await agent_pb2_grpc.AgentGatewayStub(chans[target]).ReportJson(
                    agent_pb2.JsonEventReport(json=report), metadata=md, timeout=1.0)
                k += 1
            except grpc.aio.AioRpcError as exc:  # a follower's hint, or the next replica
                hint = leader_hint(exc)
                eps = lab.endpoints
                target = hint if hint in chans and hint != target else eps[(eps.index(target) + 1) % len(eps)]
            await asyncio.sleep(0.02)
        return k
    finally:
        for ch in chans.values():
            await ch.close()


async def system_scenario(*, fast: bool, ttl: int, runs: int, rng: random.Random, backoff: float) -> dict[str, Any]:
    cluster = EtcdCluster(3, fast=fast)
    cluster.start()
    lab = HaLab(cluster.endpoints, replicas=3, hosts=3, netns=False, lease_ttl_s=ttl, agent_max_backoff_s=backoff,
                call_timeout_s=1.0 if fast else 2.5, takeover_grace_ms=10_000)
    watchers = [Watcher(lab, who, backoff) for who in ("admin", "project-a", "project-b", "admin")]
    tasks: list[asyncio.Task[Any]] = []
    stop = asyncio.Event()
    times: dict[str, list[float]] = {"leader": [], "agents": [], "consumers": [], "all": []}
    try:
        await lab.start()
        tasks = [asyncio.create_task(w.run()) for w in watchers]
        feeder = asyncio.create_task(monitor(lab, stop))
        for run in range(runs):
            leader = await lab.wait_leader(timeout=30)
            await lab.wait_agents(on=leader)
            await wait_for(lambda: all(w.subscribed_at for w in watchers), 10, 0.01, "consumers")
            await asyncio.sleep(rng.uniform(0, ttl / 2))  # a random phase of the lease renewal
            t0 = await lab.kill_replica(leader)
            new = await lab.wait_leader(timeout=ttl + 15, exclude=(leader,))
            times["leader"].append(time.monotonic() - t0)
            await lab.wait_agents(on=new, timeout=15)
            times["agents"].append(time.monotonic() - t0)
            # every replica serves Subscribe: only the consumers the dead leader served have to move. Back means
            # every subscription is served (connected) by a live replica again
            wanted = {w.first.subscription_id for w in watchers if w.first is not None}

            async def consumers_back() -> bool:
                served: set[str] = set()
                for i in range(len(lab.replicas)):
                    status = await lab.status(i)
                    if status is not None:
                        served |= {s.subscription_id for s in status.subscriptions if s.connected}
                return wanted <= served
            await wait_for(consumers_back, 15, 0.02, "consumers back")
            moved = [w.subscribed_at[-1] - t0 for w in watchers if w.subscribed_at[-1] > t0]
            times["consumers"].append(max(moved, default=0.0))  # the last of those that had to resubscribe
            times["all"].append(max(times[k][-1] for k in ("leader", "agents", "consumers")))
            print(f"  run {run + 1}: replica-{new} acting after {times['leader'][-1]:.3f} s, agents back after "
                  f"{times['agents'][-1]:.3f} s, consumers after {times['consumers'][-1]:.3f} s", flush=True)
            await lab.start_replica(leader)
        stop.set()
        sent = await feeder
        async with connect(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix=lab.prefix)) as client:
            elog = EtcdLog(client, lab.prefix)
            entries = await elog.read(0, await elog.load())
        every = Filter.from_proto(fault_pb2.SubscribeFilter())
        lost = dups = disorder = 0
        for w in watchers:
            assert w.first is not None
            p = Principal(w.who, None if w.who == "admin" else w.who, w.who == "admin")
            want = [n.sequence for n in entries if n.sequence > w.first.last_sequence
                    and view_notification(p, every, n) is not None]
            await wait_for(lambda w=w, want=want: set(want) <= set(w.seqs), 10, 0.01, "consumers to catch up")
            lost += len(set(want) - set(w.seqs))
            dups += len(w.seqs) - len(set(w.seqs))
            disorder += sum(b <= a for a, b in zip(w.seqs, w.seqs[1:]))
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in watchers:
            await w.client.close()
        await lab.close()
        cluster.stop()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {"ttl_s": ttl, "etcd_timing": "fast (heartbeat 50 ms, election 250 ms)" if fast else "default",
            "client_backoff_cap_s": backoff, "runs": runs, "median_s": med["all"], "max_s": round(max(times["all"]), 3),
            "min_s": round(min(times["all"]), 3), "leader_median_s": med["leader"],
            "agents_median_s": med["agents"], "consumers_median_s": med["consumers"],
            "reports_sent": sent, "notifications": len(entries), "lost_notifications": lost,
            "duplicates": dups, "gaps": disorder}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer runs per configuration (about a minute in all)")
    p.add_argument("--runs", type=int, default=None, help="phase 1 runs per configuration")
    p.add_argument("--system-runs", type=int, default=None, help="phase 2 runs per configuration")
    p.add_argument("--backoff", type=float, default=2.0, help="agents' and consumers' reconnect backoff cap (s)")
    p.add_argument("--seed", type=int, default=1, help="of the random kill moments")
    args = p.parse_args()
    rng = random.Random(args.seed)
    runs = args.runs or (4 if args.quick else 10)
    system_runs = args.system_runs or (3 if args.quick else 6)
    configs = ((False, 2, "default etcd timing, TTL 2"), (True, 1, "fast etcd timing, TTL 1"))
    election: list[dict[str, Any]] = []
    for fast, ttl, label in configs:
        print(f"phase 1, election only, {label}: {runs} failovers (SIGKILL the leader process)", flush=True)
        r = await scenario(fast=fast, ttl=ttl, runs=runs, rng=rng)
        print(f"  median {r['median_s']:.3f} s, max {r['max_s']:.3f} s; {r['appended']} notifications appended, "
              f"{r['lost_notifications']} lost, {r['gaps']} gaps, {r['duplicates']} duplicates", flush=True)
        election.append(r)
    system: list[dict[str, Any]] = []
    for fast, ttl, label in configs:
        print(f"phase 2, inspector replicas + agents + consumers, {label}, reconnect backoff cap {args.backoff} s: "
              f"{system_runs} failovers", flush=True)
        r = await system_scenario(fast=fast, ttl=ttl, runs=system_runs, rng=rng, backoff=args.backoff)
        print(f"  all reconnected: median {r['median_s']:.3f} s, max {r['max_s']:.3f} s (leader acting: median "
              f"{r['leader_median_s']:.3f} s; agents {r['agents_median_s']:.3f} s; consumers "
              f"{r['consumers_median_s']:.3f} s); {r['notifications']} notifications, "
              f"{r['lost_notifications']} lost, {r['duplicates']} duplicates", flush=True)
        system.append(r)
    lost = sum(r["lost_notifications"] for r in (*election, *system))
    print(json.dumps({"bench": "failover", "runs": system[0]["runs"], "ttl_s": system[0]["ttl_s"],
                      "median_s": system[0]["median_s"], "max_s": system[0]["max_s"], "lost_notifications": lost,
                      "gaps": sum(r["gaps"] for r in (*election, *system)),
                      "duplicates": sum(r["duplicates"] for r in (*election, *system)),
                      "system": {"default": system[0], "fast": system[1]},
                      "election": {"default": election[0], "fast": election[1]}}))


if __name__ == "__main__":
    asyncio.run(main())

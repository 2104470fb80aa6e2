"""Consumers spread over 1, 2 and 3 replicas: what each added replica brings to the notification path.

For each replica count, a lab of that many inspector replicas (separate
processes, one local etcd member with fast raft timing, embedded controller,
no agents) serves ``--subscribers`` administrator subscriptions, spread
evenly over the replicas by generator processes at nice 10 (``bench/scale.py
--subscribe``). A monitor then reports ``--notifications`` sensor warnings to
the leader over gRPC (``ReportJson``), back to back; the leader decides and
logs each one, every replica relays it to its own subscribers.

* ``deliveries_per_s``: every subscriber's copies / (the last copy's receipt
  − the first report);
* ``p50_ms`` / ``p99_ms``: report sent → a subscriber holds its copy, over
  every copy;
* ``replicas_cpu_s``: CPU the replica processes used meanwhile (sum), and
  ``busiest_replica_cpu_s``: the most any one of them used — what a site
  with a machine per replica must size for.

    python bench/replicas.py            # 3,000 subscribers, 20 notifications
    python bench/replicas.py --quick    # 1,500 subscribers, 10 notifications, under a minute

Everything shares this machine's cores: etcd, the replicas, the generators
(at lower priority) and the monitor. On 2 cores a third replica competes with
the others for the same CPU, so read the figures as what replicas cost and
how the load spreads, not as what a site with a machine per replica gains.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import psutil  # noqa: E402

from doctor_common.api import agent_pb2, agent_pb2_grpc  # noqa: E402
from doctor_common.client import leader_hint  # noqa: E402
from doctor_common.grpcutil import auth_metadata  # noqa: E402
from doctor_common.lab.replicated import HaLab, LocalEtcd  # noqa: E402
from scale import Generator, percentile  # noqa: E402  (bench/ is this script's directory: the same generators)


def cpu_s(procs: list[psutil.Process]) -> list[float]:
    """Each process's CPU seconds so far (0 for one that ended)."""
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.NoSuchProcess:
            out.append(0.0)
    return out


async def one(etcd: LocalEtcd, replicas: int, subscribers: int, notifications: int,
              procs_per_replica: int) -> dict[str, Any]:
    lab = HaLab(etcd.endpoints, replicas=replicas, hosts=1, netns=False)
    gens: list[Generator] = []
    try:
        await lab.start(agents=False)
        leader = await lab.wait_leader()
        per_replica = subscribers // replicas
        for r in lab.replicas:
            for k in range(procs_per_replica):
                n = per_replica // procs_per_replica
                gens.append(Generator(r.endpoint, lab.tokens["admin"], n, notifications))
        total = sum(per_replica // procs_per_replica for _ in lab.replicas for _ in range(procs_per_replica))
        await asyncio.gather(*(g.line(240) for g in gens))
        procs = [psutil.Process(r.proc.pid) for r in lab.replicas if r.proc is not None]
        cpu0 = cpu_s(procs)
        md = auth_metadata(lab.hosts["compute-1"].agent_token)
        leaders_changed = 0
        first = time.time_ns()
        target = lab.replicas[leader].endpoint
        for k in range(notifications):
            event = {"event": {"time": datetime.now(timezone.utc).isoformat(), "type": "compute.host.sensor.warning",
                               "details": {"hostname": "compute-1", "severity": "warning", "monitor_id": f"m{k}"}}}
            for _ in range(50):  # bounded: a leader that changed under the load is followed
                async with grpc.aio.insecure_channel(target) as ch:
                    try:
                        await agent_pb2_grpc.AgentGatewayStub(ch).ReportJson(
                            agent_pb2.JsonEventReport(json=json.dumps(event)), metadata=md, timeout=5)
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        leaders_changed += 1
                        target = leader_hint(exc) or target
                await asyncio.sleep(0.1)
        reports = [json.loads(await g.line(300)) for g in gens]
        cpu1 = cpu_s(procs)
        used = [round(b - a, 2) for a, b in zip(cpu0, cpu1)]
        last = max(max(int(v) for v in r["last_seen"].values()) for r in reports)
        latencies = [x for r in reports for x in r["latencies"]]
        return {"replicas": replicas, "subscribers": total, "deliveries_per_s": round(total * notifications /
                                                                                     ((last - first) / 1e9)),
                "p50_ms": round(statistics.median(latencies), 1), "p99_ms": round(percentile(latencies, 99), 1),
                "last_delivery_ms": round((last - first) / 1e6, 1), "replicas_cpu_s": round(sum(used), 2),
                "busiest_replica_cpu_s": max(used), "cpu_s_per_replica": used, "reports_redirected": leaders_changed}
    finally:
        for g in gens:
            g.stop()
        await lab.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,500 subscribers, 10 notifications")
    ap.add_argument("--subscribers", type=int, default=0)
    ap.add_argument("--notifications", type=int, default=0)
    ap.add_argument("--procs", type=int, default=2, help="generator processes per replica")
    args = ap.parse_args()
    subscribers = args.subscribers or (1500 if args.quick else 3000)
    notifications = args.notifications or (10 if args.quick else 20)
    etcd = await LocalEtcd().start()
    results = []
    try:
        for n in (1, 2, 3):
            r = await one(etcd, n, subscribers, notifications, args.procs)
            results.append(r)
            print(f"{n} replica(s), {r['subscribers']} subscribers spread evenly: {r['deliveries_per_s']} deliveries/s "
                  f"(last copy {r['last_delivery_ms']} ms after the first report), report → copy p50 {r['p50_ms']} ms, "
                  f"p99 {r['p99_ms']} ms; replicas used {r['replicas_cpu_s']} s of CPU, the busiest "
                  f"{r['busiest_replica_cpu_s']} s", flush=True)
    finally:
        await etcd.stop()
    print(json.dumps({"bench": "replicas", "cpus": len(os.sched_getaffinity(0)), "notifications": notifications,
                      "shared": f"etcd, the replicas, {args.procs} generator processes per replica at nice 10",
                      "runs": results}))


if __name__ == "__main__":
    asyncio.run(main())

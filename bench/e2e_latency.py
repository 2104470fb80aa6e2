#!/usr/bin/env python3
"""End-to-end fault latency: link down -> the owning consumer holds the notifications.

The owner first holds the suspected notice (``link_to_suspected_held``), then
the fenced one, then the controller's completion; TOTAL is to the last.

For 1 and 50 servers on the host: cut the host's veth link, wait for the
owner's notification, re-arm (link up, BMC on, servers and ports active,
EnableHost), repeat. Prints p50/p95/p99 per stage and in total, then one
JSON line. Needs root (network namespaces). `--quick`: fewer runs (< 1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller_adapter.base import ServerState  # noqa: E402
from doctor_common.api import common_pb2, fault_pb2  # noqa: E402
from doctor_common.client import DoctorClient  # noqa: E402
from doctor_common.lab.cloud import NO_FENCING_BUDGET, Lab, wait_for  # noqa: E402
from doctor_common.timeline import Stage, as_dict, percentile, stage_durations, stage_name  # noqa: E402

HOST = "compute-1"
MARKED_DOWN = fault_pb2.INCIDENT_PHASE_MARKED_DOWN


async def measure(servers: int, runs: int) -> dict[str, object]:
    # the same host is fenced again and again here: lift the zone's fencing budget, which would pace it
    lab = Lab(hosts=1, servers_per_host=servers, projects=("tenant",),
              extra_config=NO_FENCING_BUDGET)
    inbox: list[fault_pb2.FaultNotification] = []
    ready = asyncio.Event()
    await lab.start()
    client = DoctorClient(lab.endpoint, lab.tokens["tenant"])
    admin = DoctorClient(lab.endpoint, lab.tokens["admin"])

    async def consume(c: DoctorClient, sink: list[fault_pb2.FaultNotification] | None) -> None:
        async for msg in c.subscribe_once():
            if msg.WhichOneof("kind") == "subscribed":
                ready.set()
            elif sink is not None:
                sink.append(msg.fault)
    tasks = [asyncio.create_task(consume(client, inbox)), asyncio.create_task(consume(admin, None))]
    insp = lab.inspector
    per_stage: dict[str, list[float]] = {}
    totals: list[float] = []
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # the BMC's session warm, as a fault finds it in steady state (the inspector logs in ahead of faults:
        # IpmiFencer.warm); a cut while that login still ran made the first run's fence wait for it
        await insp.fencer.power_state(insp.responder.bmc_for(HOST))
        for _ in range(runs):
            inbox.clear()
            cut_ns = lab.cut_link(HOST)
            await wait_for(lambda: any(x.phase == MARKED_DOWN for x in inbox), 10, 0.0005, "the owner's notification")
            suspected, n = inbox[0], next(x for x in inbox if x.phase == MARKED_DOWN)
            assert suspected.phase == fault_pb2.INCIDENT_PHASE_SUSPECTED
            per_stage.setdefault("link_to_suspected_held", []).append(
                (as_dict(suspected.timeline)[Stage.STAGE_DELIVERED] - cut_ns) / 1e6)
            assert n.fenced and len([v for v in n.virtual_resource_info if v.virtual_resource_type == "server"]) == servers
            stamps = as_dict(n.timeline)
            per_stage.setdefault("link_to_observed", []).append((stamps[Stage.STAGE_OBSERVED] - cut_ns) / 1e6)
            for stage, ms in stage_durations(n.timeline):
                per_stage.setdefault(stage_name(stage), []).append(ms)
            totals.append((stamps[Stage.STAGE_DELIVERED] - cut_ns) / 1e6)
            if os.environ.get("BENCH_TRACE"):
                print(f"  run {len(totals)}: total {totals[-1]:.1f} ms", file=sys.stderr)
            # re-arm: the host is repaired and its servers restarted
            lab.restore_link(HOST)
            await insp.fencer.power_on(insp.responder.bmc_for(HOST))
            ids = [s.id for s in insp.resources.servers_on(HOST)]
            await insp.controller.reset_servers_state(ids, ServerState.ACTIVE)
            insp.resources.set_servers_state(ids, ServerState.ACTIVE)
            ports = [p.id for p in insp.resources.ports_on(HOST)]
            await insp.controller.set_ports_data_plane_status(ports, "ACTIVE")
            insp.resources.set_ports_status(ports, "ACTIVE")
            await insp.responder.enable_host(HOST)
            nic = insp.liveness.hosts[HOST].components
            await wait_for(lambda: nic.get("nic:eth0") is not None and nic["nic:eth0"].status == 1
                           and len(insp.alarms) == 0 and inbox[-1].phase == fault_pb2.INCIDENT_PHASE_CLOSED
                           and inbox[-1].virtual_resource_info[0].faults[0].state == common_pb2.ALARM_STATE_CLEARED,
                           10, 0.001, "re-arm")
            assert lab.power(HOST)[0] == "on"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await admin.close()
        await lab.close()

    def pct(values: list[float]) -> dict[str, float]:
        return {f"p{q}_ms": round(percentile(values, q), 3) for q in (50, 95, 99)}
    print(f"\n{servers} server(s) on the host, {runs} link cuts")
    print(f"  {'stage':<18} {'p50':>8} {'p95':>8} {'p99':>8}   (ms)")
    for stage, values in per_stage.items():
        p = pct(values)
        print(f"  {stage:<18} {p['p50_ms']:>8.3f} {p['p95_ms']:>8.3f} {p['p99_ms']:>8.3f}")
    p = pct(totals)
    print(f"  {'TOTAL link->held':<18} {p['p50_ms']:>8.3f} {p['p95_ms']:>8.3f} {p['p99_ms']:>8.3f}   max {max(totals):.3f}")
    return {"bench": "e2e_latency", "servers": servers, "runs": runs, **p, "max_ms": round(max(totals), 3),
            "stages_p50_ms": {k: round(percentile(v, 50), 3) for k, v in per_stage.items()}}


async def main(args: argparse.Namespace) -> None:
    results = [await measure(n, args.runs or (10 if args.quick else 40)) for n in (1, 50)]
    print(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 cuts per size instead of 40")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("e2e_latency needs root: it creates network namespaces and veth links")
    asyncio.run(main(args))

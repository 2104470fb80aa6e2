"""Planned maintenance, timed: a session over one host from StateChange to IN_MAINTENANCE, and back.

A standalone inspector with its embedded controller (the lab: virtual BMCs, no
agents), three hosts with ``--servers`` servers each, spread over five
projects. Each project's owner is a consumer on its own subscription that
answers LIVE_MIGRATE for each of its servers the moment the notice arrives
(what a VNFM that switched to STBY would do). Each run measures:

* ``notify_ms``: StateChange sent → the last owner holds its notice;
* ``consent_ms``: the notice → the last owner's reply acknowledged;
* ``empty_ms``: the last reply → IN_MAINTENANCE on the administrator's stream
  (every server moved by the controller, the host confirmed empty);
* ``total_ms``: StateChange sent → IN_MAINTENANCE;
* ``end_ms``: StateChange "normal" → COMPLETED (host enabled, owners told).

Everything (inspector, owners, administrator) shares one process and event
loop on this machine's cores, so the figures include the consumers' own
work; the owners answer at once, so ``consent_ms`` is the system's share of a
consent round, not a human's.

    python bench/maintenance.py            # 10 and 50 servers per host, 7 runs each
    python bench/maintenance.py --quick    # 10 servers per host, 3 runs (a few seconds)

The last line printed is one JSON object (medians and p99 per server count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doctor_common.api import maintenance_pb2 as mpb  # noqa: E402
from doctor_common.client import DoctorClient  # noqa: E402
from doctor_common.lab.cloud import Lab  # noqa: E402

PROJECTS = tuple(f"project-{c}" for c in "abcde")


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


class AnsweringOwner:
    """A subscription that answers every maintenance request for its servers with LIVE_MIGRATE."""

    def __init__(self, lab: Lab, project: str) -> None:
        self.client = DoctorClient(lab.endpoint, lab.tokens[project])
        self.noticed: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.client.subscribe():
            kind = msg.WhichOneof("kind")
            if kind == "subscribed":
                self.ready.set()
            elif kind == "maintenance" and msg.maintenance.state == mpb.SESSION_STATE_OWNERS_NOTIFIED:
                n = msg.maintenance
                self.noticed[n.session_id] = time.perf_counter()
                await self.client.reply(n.session_id, {v.virtual_resource_id: mpb.INSTRUCTION_LIVE_MIGRATE
                                                       for v in n.virtual_resource_info})
                self.answered[n.session_id] = time.perf_counter()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


async def one_size(servers: int, runs: int) -> dict[str, Any]:
    lab = Lab(hosts=3, servers_per_host=servers, projects=PROJECTS, netns=False)
    owners: list[AnsweringOwner] = []
    admin = DoctorClient(lab.endpoint, lab.tokens["admin"])
    figures: dict[str, list[float]] = {k: [] for k in ("notify_ms", "consent_ms", "empty_ms", "total_ms", "end_ms")}
    try:
        await lab.start(agents=False)
        owners = [AnsweringOwner(lab, p) for p in PROJECTS]
        await asyncio.wait_for(asyncio.gather(*(o.ready.wait() for o in owners)), 20)
        for run in range(runs):
            host = f"compute-{run % 3 + 1}"
            asked = [o for o in owners]
            t0 = time.perf_counter()
            events = [m async for m in admin.maintenance_start([host], reply_timeout_s=60)]
            t_done = time.perf_counter()
            final = events[-1].session
            if final.state != mpb.SESSION_STATE_IN_MAINTENANCE:
                raise RuntimeError(f"run {run}: {mpb.SessionState.Name(final.state)}: {final.detail}")
            sid = final.session_id
            involved = [o for o in asked if sid in o.noticed]
            figures["notify_ms"].append((max(o.noticed[sid] for o in involved) - t0) * 1e3)
            figures["consent_ms"].append((max(o.answered[sid] for o in involved)
                                          - max(o.noticed[sid] for o in involved)) * 1e3)
            figures["empty_ms"].append((t_done - max(o.answered[sid] for o in involved)) * 1e3)
            figures["total_ms"].append((t_done - t0) * 1e3)
            t1 = time.perf_counter()
            ended = [m async for m in admin.maintenance_end([host], force=True)]  # no agents here: forced
            figures["end_ms"].append((time.perf_counter() - t1) * 1e3)
            if ended[-1].session.state != mpb.SESSION_STATE_COMPLETED:
                raise RuntimeError(f"run {run}: the end did not complete: {ended[-1].session.detail}")
    finally:
        for o in owners:
            await o.close()
        await admin.close()
        await lab.close()
    out: dict[str, Any] = {"servers_per_host": servers, "runs": runs}
    for k, xs in figures.items():
        out[k] = {"median": round(statistics.median(xs), 1), "p99": round(p99(xs), 1)}
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 servers per host, 3 runs")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sizes, runs = ([10], 3) if args.quick else ([10, 50], args.runs)
    results = []
    for servers in sizes:
        r = await one_size(servers, runs)
        results.append(r)
        print(f"{servers:>3} servers/host over {len(PROJECTS)} projects, {runs} runs: " + "  ".join(
            f"{k} {v['median']:.1f} (p99 {v['p99']:.1f})" for k, v in r.items() if isinstance(v, dict)))
    print(json.dumps({"bench": "maintenance", "cpus": len(__import__("os").sched_getaffinity(0)),
                      "shared": "inspector, owners and administrator in one process", "results": results}))


if __name__ == "__main__":
    asyncio.run(main())

"""Figures for the OpenStack backend (not a test): client CPU per call and concurrency of per-server resets.

The cloud runs in its own process so only the adapter's CPU is counted here.

    .venv/bin/python -m tests.unit.controller_adapter.measure_openstack [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller_adapter.base import ServerState
from controller_adapter.openstack import OpenStackController, Settings


class CloudProcess:
    def __init__(self, directory: Path, **options: Any) -> None:
        argv = [sys.executable, "-m", "tests.openstack_cloud", "--dir", str(directory)]
        for k, v in options.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        stats = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=10)
        return stats


async def cpu_per_force_down(compute_max: str, n: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        cloud = CloudProcess(Path(d), compute_max=compute_max, hosts=2)
        ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=Path(cloud.info["clouds_yaml"])))
        try:
            await ctl.force_down("c1", True)  # connects, caches the service id
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(n):
                await ctl.force_down("c1", i % 2 == 0)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            # the same PUTs straight through openstacksdk, for comparison (the adapter's overhead)
            conn, sid = ctl._conn, ctl._ids.get("c1") if compute_max >= "2.53" else None
            base = time.process_time()
            for i in range(n):
                conn.compute.update_service_forced_down(sid, host="c1", binary="nova-compute", forced=i % 2 == 0)
            base = time.process_time() - base
        finally:
            await ctl.close()
            cloud.stop()
    return (f"force_down on compute {compute_max}: {cpu / n * 1000:.2f} ms CPU, {wall / n * 1000:.2f} ms wall per call; "
            f"openstacksdk alone {base / n * 1000:.2f} ms CPU (n={n})")


async def resets(servers: int, workers: int, latency_ms: float) -> str:
    with tempfile.TemporaryDirectory() as d:
        cloud = CloudProcess(Path(d), servers=servers, latency_ms=latency_ms)
        ctl = OpenStackController(Settings(cloud="fake", clouds_yaml=Path(cloud.info["clouds_yaml"]), max_workers=workers))
        try:
            await ctl.connect()
            wall = time.perf_counter()
            failed = await ctl.reset_servers_state([f"s{i}" for i in range(servers)], ServerState.ERROR)
            wall = time.perf_counter() - wall
        finally:
            await ctl.close()
            stats = cloud.stop()
    assert not failed
    return (f"reset {servers} servers, {latency_ms:.0f} ms per call in the cloud, max_workers={workers}: "
            f"{wall * 1000:.0f} ms, {stats['max_in_flight']} in flight, {stats['connections']} connections")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 50 if args.quick else 500
    for mv in ("2.52", "2.90"):
        print(await cpu_per_force_down(mv, n))
    for workers in (1, 8, 16):
        print(await resets(50, workers, 20))


if __name__ == "__main__":
    asyncio.run(main())

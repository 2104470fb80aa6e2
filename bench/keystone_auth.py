"""What a Keystone token costs a consumer's call: cold (validated by Keystone) and cached, and a burst on one token.

An inspector (the lab's, embedded controller, no agents) with ``[auth.keystone]``
pointed at the test cloud's Keystone (``tests/openstack_cloud.py``, real HTTP on
loopback, answering at once) serves QueryFaults. Measured from a gRPC client on
the same machine, medians over ``--calls`` calls:

- static: a static ``[[auth.consumers]]`` token (the floor);
- cold: a new Keystone token each call (one GET /v3/auth/tokens each);
- cached: the same Keystone token again (no request to Keystone);
- burst: ``--burst`` concurrent calls presenting one new token: wall time and
  how many validations Keystone received (single-flight: 1).

The last line printed is one JSON object.

    .venv/bin/python bench/keystone_auth.py [--calls 200] [--burst 100] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doctor_common.api import fault_pb2, fault_pb2_grpc  # noqa: E402
from doctor_common.lab.cloud import Lab  # noqa: E402
from tests.openstack_cloud import FakeCloud  # noqa: E402


async def timed(stub: Any, token: str) -> float:
    started = time.perf_counter()
    await stub.QueryFaults(fault_pb2.FaultQueryRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10)
    return (time.perf_counter() - started) * 1000


async def main(calls: int, burst: int) -> dict[str, Any]:
    with FakeCloud() as cloud:
        lab = Lab(hosts=1, servers_per_host=1, netns=False)
        clouds_yaml = cloud.write_clouds_yaml(lab.dir)
        lab.extra_config = f'\n[auth.keystone]\ncloud = "fake"\nclouds_yaml = "{clouds_yaml}"\n'
        # [auth.keystone] must follow the other [auth] tables: move it after them
        write = lab.write_files

        def write_files() -> Path:
            lab.extra_config, extra = "", lab.extra_config
            cfg = write()
            cfg.write_text(cfg.read_text() + extra)
            return cfg
        lab.write_files = write_files  # type: ignore[method-assign]
        await lab.start(agents=False)
        try:
            async with grpc.aio.insecure_channel(lab.endpoint) as channel:
                stub = fault_pb2_grpc.FaultManagementStub(channel)
                await timed(stub, cloud.issue_token("warm", "project-a"))  # the inspector's own login, discovery
                static = [await timed(stub, lab.tokens["project-a"]) for _ in range(calls)]
                cold = [await timed(stub, cloud.issue_token(f"u{i}", "project-a")) for i in range(calls)]
                token = cloud.issue_token("alice", "project-a")
                cached = [await timed(stub, token) for _ in range(calls + 1)][1:]
                one = cloud.issue_token("bob", "project-b")
                before = len(cloud.validations())
                started = time.perf_counter()
                await asyncio.gather(*(timed(stub, one) for _ in range(burst)))
                wall = (time.perf_counter() - started) * 1000
        finally:
            await lab.close()
        return {"static_ms": round(statistics.median(static), 3), "cold_ms": round(statistics.median(cold), 3),
                "cached_ms": round(statistics.median(cached), 3), "burst": burst, "burst_wall_ms": round(wall, 1),
                "burst_validations": len(cloud.validations()) - before}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="50 calls, a burst of 50 (the full run takes seconds too)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.burst = min(args.calls, 50), min(args.burst, 50)
    print(json.dumps({"bench": "keystone_auth", **asyncio.run(main(args.calls, args.burst))}))

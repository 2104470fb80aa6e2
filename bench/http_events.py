"""Monitors' events over HTTP (``PUT /events``): what one report costs, and what a flood does to the inspector.

A standalone inspector (the lab's embedded controller, virtual BMCs, no agents) with ``[http_events]`` on
loopback; the load comes from a separate process (``--client``), so the inspector's loop is its own. Each
report is one of compute-1's components reported OK (nothing to clear: the cost measured is the HTTP server's,
the checks' and the hand-over's, not the responder's). Three runs:

- ``serial``: one connection, one report at a time: latency (p50/p99).
- ``concurrent``: ``--clients`` connections, each one report at a time: reports/s.
- ``flood``: ``--flood`` connections against ``max_connections`` (default 8) and ``max_waiting = 1024``: the
  inspector's worst event-loop lag meanwhile (its own ``Lag`` watch) and how many were refused.

    python bench/http_events.py            # 3 s per run
    python bench/http_events.py --quick    # 1 s per run

The last line printed is one JSON object with every figure.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BODY = json.dumps({"event": {"time": "2026-12-03T09:00:00Z", "type": "compute.host.sensor.warning",
                             "details": {"hostname": "compute-1", "status": "ok", "monitor_id": "bench"}}}).encode()


async def client(url: str, token: str, connections: int, seconds: float) -> dict[str, Any]:
    """``connections`` keep-alive connections, each sending reports back to back for ``seconds``."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    end = time.monotonic() + seconds

    async def one(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                async with session.put(url, data=BODY, headers=headers) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError as exc:  # a refused connection may be reset before its 503 is read
                status = type(exc).__name__  # type: ignore[assignment]
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(connections)))
    lat = sorted(latencies) or [0.0]
    return {"ok_per_s": round(len(latencies) / seconds), "statuses": statuses,
            "p50_ms": round(statistics.median(lat) * 1e3, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2)}


async def run(url: str, token: str, connections: int, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", url, token, str(connections), str(seconds),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    return json.loads(out.decode().strip().splitlines()[-1])


async def main(seconds: float, clients: int, flood: int, serving: int) -> None:
    from doctor_common.lab.cloud import Lab

    lab = Lab(hosts=3, servers_per_host=1, netns=False,
              extra_config=f'[http_events]\nlisten = "127.0.0.1:0"\nmax_connections = {serving}\n'
                           'max_waiting = 1024\n')
    try:
        await lab.start(agents=False)
        url = f"http://127.0.0.1:{lab.inspector.http_events.port}/events"
        token = lab.hosts["compute-1"].agent_token
        figures: dict[str, Any] = {}
        for name, conns in (("serial", 1), ("concurrent", clients), ("flood", flood)):
            lab.inspector.lag.worst_s = 0.0
            figures[name] = await run(url, token, conns, seconds)
            figures[name]["worst_loop_lag_ms"] = round(lab.inspector.lag.worst_s * 1e3, 1)
            print(name, figures[name], flush=True)
        figures["busy_refused"] = lab.inspector.http_events.server.refused
        print(json.dumps(figures))
    finally:
        await lab.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, token, conns, secs = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(asyncio.run(client(url, token, conns, secs))))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--flood", type=int, default=200)
    ap.add_argument("--serving", type=int, default=8, help="max_connections")
    a = ap.parse_args()
    asyncio.run(main(1.0 if a.quick else 3.0, a.clients, a.flood, a.serving))

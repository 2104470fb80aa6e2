"""The fault chain with the OpenStack backend: a link cut to the owner's fenced notice and to a fully updated cloud.

One lab host (a network namespace with its agent and virtual BMC) carrying N
servers with a port each; the inspector with ``backend = "openstack"``
against the project's test cloud (``tests/openstack_cloud.py``) running in
its own process at nice 10 and answering every Nova and Neutron call after
``--latency-ms`` (20, as in the side-by-side with OPNFV Doctor's sample
inspector in ``../shared/notes/limits.md``). Each run cuts the link and
measures, from the agent's netlink event (stage *observed*):

* ``owner_notified``: the owner holds the *fenced* notice (its client's
  *delivered* stamp; the owner is a ``DoctorClient`` in a process of its own,
  as a VNF manager is: in the inspector's process it read the notice only
  once the loop had sent the cloud calls, 15–40 ms at N = 50);
* ``cloud_updated``: the *marked-down* notice is published, which happens once
  the force-down, every reset and every port update have been answered by
  the cloud (an upper bound: it includes the publish itself);

then re-arms (link up, BMC on, ``EnableHost``, the servers and ports active
again). Needs root (network namespaces).

    sudo .venv/bin/python bench/openstack_path.py            # N = 1, 10, 50; 15 runs each
    sudo .venv/bin/python bench/openstack_path.py --quick    # N = 1, 50; 5 runs each: 7 s here

The last line printed is one JSON object, per N: ``owner_notified_p50_ms``,
``cloud_updated_p50_ms`` (and p99s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller_adapter.base import ServerState  # noqa: E402
from doctor_common.api import fault_pb2  # noqa: E402
from doctor_common.client import DoctorClient  # noqa: E402
from doctor_common.lab.cloud import NO_FENCING_BUDGET, Lab, wait_for  # noqa: E402
from doctor_common.timeline import Stage, as_dict  # noqa: E402
from tests.integration.test_fault_chain_openstack import OpenStackLab  # noqa: E402

P = fault_pb2.IncidentPhase


class CloudProcess:
    """The test cloud in its own process (its HTTP threads must not share the inspector's GIL), seeded with the
    lab's hosts, servers and ports."""

    def __init__(self, lab: Lab, latency_ms: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="doctor-cloud-"))
        seed = {"hosts": [{"name": h, "zone": "lab"} for h in lab.hosts],
                "servers": [{"id": s, "host": h.name, "project_id": lab.server_owner[s]}
                            for h in lab.hosts.values() for s in h.servers],
                "ports": [{"id": f"port-{s}", "host": h.name, "project_id": lab.server_owner[s], "device_id": s}
                          for h in lab.hosts.values() for s in h.servers]}
        (self.dir / "seed.json").write_text(json.dumps(seed))
        self.proc = subprocess.Popen(
            ["nice", "-n", "10", sys.executable, "-m", "tests.openstack_cloud", "--dir", str(self.dir), "--seed",
             str(self.dir / "seed.json"), "--latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)  # its seed and clouds.yaml


class ProcessCloudLab(OpenStackLab):
    """OpenStackLab pointed at a cloud in another process (its clouds.yaml copied into the lab)."""

    def __init__(self, latency_ms: float, **kw: Any) -> None:
        Lab.__init__(self, **kw)
        self.extra_config = "".join(
            f'[fencing.bmc.{h.name}]\naddress = "127.0.0.1"\nport = {h.bmc_port}\nusername = "admin"\n'
            f'password_file = "bmc.pass"\n' for h in self.hosts.values()) + NO_FENCING_BUDGET
        self.process = CloudProcess(self, latency_ms)

        class Writer:  # what OpenStackLab.write_files needs of a cloud
            def __init__(self, path: Path) -> None:
                self.path = path

            def write_clouds_yaml(self, directory: Path) -> Path:
                target = Path(directory) / "clouds.yaml"
                target.write_text(self.path.read_text())
                return target
        self.cloud = Writer(Path(self.process.info["clouds_yaml"]))  # type: ignore[assignment]

    sdk_only = False  # --sdk: the writes through openstacksdk's resource layer (http_fast_path = false)

    def write_files(self) -> Path:
        cfg = super().write_files()
        if self.sdk_only:
            cfg.write_text(cfg.read_text().replace('timeout_s = 5\n', 'timeout_s = 5\nhttp_fast_path = false\n', 1))
        return cfg

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.process.stop()


def ms(n: fault_pb2.FaultNotification, a: int, b: int) -> float:
    st = as_dict(n.timeline)
    return (st[b] - st[a]) / 1e6


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def consume(endpoint: str, token: str) -> None:
    """The owner (``--consume``): one JSON line when subscribed, then each fault notification as received (its
    client's *delivered* stamp included), serialized, one per line."""
    async with DoctorClient(endpoint, token) as client:
        async for msg in client.subscribe():
            if msg.WhichOneof("kind") == "subscribed":
                print("{}", flush=True)
            elif msg.WhichOneof("kind") == "fault":
                print(base64.b64encode(msg.fault.SerializeToString()).decode(), flush=True)


async def one_size(servers: int, runs: int, latency_ms: float, sdk_only: bool = False) -> dict[str, Any]:
    lab = ProcessCloudLab(latency_ms, hosts=1, servers_per_host=servers, projects=("tenant",))
    lab.sdk_only = sdk_only
    got: list[fault_pb2.FaultNotification] = []
    owner: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    notified: list[float] = []
    updated: list[float] = []
    try:
        await lab.start()
        owner = await asyncio.create_subprocess_exec(sys.executable, __file__, "--consume", lab.endpoint,
                                                     lab.tokens["tenant"], stdout=asyncio.subprocess.PIPE)
        assert owner.stdout is not None
        first = await asyncio.wait_for(owner.stdout.readline(), 30)
        if first.strip() != b"{}":
            raise RuntimeError(f"the owner's process did not subscribe: {first!r}")

        async def read(stream: asyncio.StreamReader) -> None:
            while line := await stream.readline():
                got.append(fault_pb2.FaultNotification.FromString(base64.b64decode(line)))
        reader = asyncio.create_task(read(owner.stdout))
        insp, host = lab.inspector, "compute-1"
        # the BMC's session warm, as a fault finds it in steady state: the inspector logs in ahead of faults
        # (IpmiFencer.warm), and a cut while that login still runs made the first run's fence wait for it —
        # a pyghmi login to a loopback BMC can take 0.5–1 s when it misses a reply (its own retransmit timeout)
        await insp.fencer.power_state(insp.responder.bmc_for(host))
        for _ in range(runs):
            got.clear()
            lab.cut_link(host)
            await wait_for(lambda: any(n.phase == P.INCIDENT_PHASE_MARKED_DOWN for n in got), 20, 0.0005,
                           "the marked-down notice")
            by_phase = {n.phase: n for n in got}
            fenced, done = by_phase[P.INCIDENT_PHASE_FENCED], by_phase[P.INCIDENT_PHASE_MARKED_DOWN]
            states = {v.virtual_resource_type: v.virtual_resource_state for v in done.virtual_resource_info}
            if states != {"server": "error", "port": "down"}:
                raise RuntimeError(f"the cloud did not take every update: {states}")
            notified.append(ms(fenced, Stage.STAGE_OBSERVED, Stage.STAGE_DELIVERED))
            updated.append(ms(done, Stage.STAGE_OBSERVED, Stage.STAGE_PUBLISHED))
            lab.restore_link(host)
            await insp.fencer.power_on(insp.responder.bmc_for(host))
            await insp.responder.enable_host(host)
            await insp.controller.reset_servers_state(lab.hosts[host].servers, ServerState.ACTIVE)
            await insp.controller.set_ports_data_plane_status([f"port-{s}" for s in lab.hosts[host].servers],
                                                              "ACTIVE")
            nic = insp.liveness.hosts[host].components
            await wait_for(lambda: nic.get("nic:eth0") is not None and nic["nic:eth0"].status == 1
                           and len(insp.alarms) == 0, 10, 0.001, "re-arm")
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if owner is not None and owner.returncode is None:
            owner.kill()
            await owner.wait()
        await lab.close()
    return {"servers": servers, "runs": runs,
            "owner_notified_p50_ms": round(pct(notified, 50), 1), "owner_notified_p99_ms": round(pct(notified, 99), 1),
            "cloud_updated_p50_ms": round(pct(updated, 50), 1), "cloud_updated_p99_ms": round(pct(updated, 99), 1)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1 and 50, 5 runs each")
    ap.add_argument("--runs", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--sdk", action="store_true", help="the writes through openstacksdk (http_fast_path = false)")
    ap.add_argument("--consume", nargs=2, metavar=("ENDPOINT", "TOKEN"), help=argparse.SUPPRESS)  # the owner's process
    args = ap.parse_args()
    if args.consume:
        await consume(*args.consume)
        return
    if os.geteuid() != 0:
        raise SystemExit("bench/openstack_path.py needs root (network namespaces)")
    sizes = (1, 50) if args.quick else (1, 10, 50)
    runs = args.runs or (5 if args.quick else 15)
    results = []
    for n in sizes:
        r = await one_size(n, runs, args.latency_ms, args.sdk)
        results.append(r)
        print(f"N = {n:>2}: owner holds the fenced notice p50 {r['owner_notified_p50_ms']} ms "
              f"(p99 {r['owner_notified_p99_ms']}); cloud fully updated p50 {r['cloud_updated_p50_ms']} ms "
              f"(p99 {r['cloud_updated_p99_ms']}) after the link cut, {args.latency_ms:.0f} ms per cloud call")
    print(json.dumps({"bench": "openstack_path", "cpus": len(os.sched_getaffinity(0)), "latency_ms": args.latency_ms,
                      "path": "openstacksdk" if args.sdk else "raw HTTP (aiohttp)",
                      "shared": "the test cloud in its own process at nice 10; the owner's client in its own "
                                "process; agent, BMC and inspector on the same cores", "results": results}))


if __name__ == "__main__":
    asyncio.run(main())

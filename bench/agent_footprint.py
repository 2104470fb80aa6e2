"""How much a compute node pays for the agent: peak RSS and CPU share with every checker at default intervals.

The agent (a real ``doctor-agent`` process, started as its unit starts it)
runs nic, ipmi, hypervisor and exec at their default intervals against real
counterparts: processes named like libvirtd, nova-compute and a VM's qemu, a
listening libvirt socket, a trivial check script; its nic is a veth end in a
network namespace when root, else ``lo``. It streams to a minimal real
AgentGateway (gRPC on a unix socket) that acks its events, keeping the
inspector's default keepalive.

The ipmi checker runs twice over, one run each:
- in-band, the default on a compute node (no ``address``): pyghmi on
  ``/dev/ipmi0``. This machine has no IPMI device, so every poll fails at
  open and reports the BMC unreachable; the code and libraries loaded are the
  in-band ones, the BMC traffic is missing.
- over the LAN to a virtual BMC with a handful of sensors and a SEL (real
  RMCP+ traffic). pyghmi's LAN session imports ``cryptography`` for AES.

CPU is measured after the agent said READY=1 (start-up imports excluded),
RSS is the peak over the whole run. Targets: RSS < 40 MB, CPU < 0.5 % of one
core, for the default configuration. The last line printed is one JSON
object: the default (in-band) figures, and the LAN run's as ``lan_*``.

    .venv/bin/python bench/agent_footprint.py [--quick] [--seconds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.grpcutil import server_options  # noqa: E402
from doctor_common.lab.cloud import free_port  # noqa: E402
from doctor_common.lab.vbmc import write_sensors  # noqa: E402
from inspector.config import InspectorConfig  # noqa: E402
from tests.conftest import anotify_until, arecv  # noqa: E402

PY = sys.executable
TARGET_RSS_MB = 40.0
TARGET_CPU_PCT = 0.5
# what the inspector tells and does by default: its ConfigHint's heartbeat interval, its keepalive pings
HEARTBEAT_MS = InspectorConfig.__dataclass_fields__["heartbeat_interval_ms"].default
SERVER_KEEPALIVE_MS = 1000
SENSORS = [
    {"name": "CPU1 Temp", "type": "temperature", "value": 45, "unc": 80, "uc": 90},
    {"name": "CPU2 Temp", "type": "temperature", "value": 47, "unc": 80, "uc": 90},
    {"name": "Inlet Temp", "type": "temperature", "value": 24, "unc": 40, "uc": 45},
    {"name": "FAN1", "type": "fan", "value": 5400, "m": 100, "lnc": 1500, "lc": 1000},
    {"name": "FAN2", "type": "fan", "value": 5300, "m": 100, "lnc": 1500, "lc": 1000},
    {"name": "PSU1", "type": "power_supply", "states": [0]},
    {"name": "PSU2", "type": "power_supply", "states": [0]},
    {"name": "DIMM A1", "type": "memory", "states": [6]},
    {"name": "DIMM B1", "type": "memory", "states": [6]},
    {"name": "CPU1", "type": "processor", "states": [7]},
    {"name": "CPU2", "type": "processor", "states": [7]},
]


class Gateway(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.events = 0
        self.heartbeats = 0
        self.hello: agent_pb2.Hello | None = None

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "hello":
                self.hello = msg.hello
                yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=self.heartbeat_ms))
            elif kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "events":
                self.events += len(msg.events.events)
                yield agent_pb2.GatewayMessage(ack=agent_pb2.Ack(sequence=msg.events.events[-1].sequence))


def event_loop_cpu_s(pid: int) -> float:
    """CPU time of the process's main thread (its event loop), from schedstat: ns, not psutil's 10 ms ticks."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Host:
    """The agent's world: namespace (when root), BMC, hypervisor-like processes, socket, script."""

    def __init__(self, tmp: Path, only: set[str] | None = None, ipmi: str = "local") -> None:
        self.tmp = tmp
        self.only = only
        self.ipmi = ipmi
        self.netns = f"doctor-bench-{os.getpid()}" if os.geteuid() == 0 else None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tag = f"{os.getpid()}"
        self.extra = ""  # [agent] keys that override the defaults (what-if runs)

    def wrap(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def setup(self) -> str:
        iface = "lo"
        if self.netns:
            veth = f"vb{os.getpid() % 100000}"
            run("ip", "netns", "add", self.netns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            run("ip", "link", "set", veth, "up")
            run("ip", "-n", self.netns, "link", "set", "lo", "up")
            run("ip", "-n", self.netns, "link", "set", "eth0", "up")
            iface = "eth0"
        pw = self.tmp / "bmc.pw"
        pw.write_text("bench-secret\n")
        pw.chmod(0o600)
        sensors = self.tmp / "sensors.json"
        write_sensors(sensors, SENSORS)
        port = free_port(socket.SOCK_DGRAM)
        if self.ipmi == "lan":
            bmc = self.start(self.wrap([PY, "-m", "doctor_common.lab.vbmc", "--port", str(port), "--password-file",
                                        str(pw), "--sensors-file", str(sensors)]), stdout=subprocess.PIPE)
            assert bmc.stdout is not None and b"listening" in bmc.stdout.readline()
            ipmi = f'address = "127.0.0.1"\nport = {port}\npassword_file = "{pw}"\n'
        else:
            ipmi = ""  # in-band: /dev/ipmi0
        self.start(["bash", "-c", f"exec -a libvirtd-{self.tag} sleep 100000"])
        self.start(["bash", "-c", f"exec -a nova-compute-{self.tag} sleep 100000"])
        qemu = self.start(["bash", "-c", f"exec -a qemu-system-bench-{self.tag} sleep 100000"])
        (self.tmp / "qemu").mkdir()
        (self.tmp / "qemu" / "vm1.pid").write_text(f"{qemu.pid}\n")
        sock = self.tmp / "libvirt-sock"
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(16)\n"
                "print('ok',flush=True)\nwhile True:\n  c,_=s.accept()\n  c.close()\n")
        listener = self.start([PY, "-c", code, str(sock)], stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline() == b"ok\n"
        check = self.tmp / "check"
        check.write_text("#!/bin/sh\necho 'OK - all good'\n")
        check.chmod(0o755)
        cfg = self.tmp / "agent.toml"
        cfg.write_text(f'''[agent]
host_id = "bench-host"
{self.extra}inspector = ["unix:{self.tmp / 'gw.sock'}"]
log_level = "warning"

[checkers.nic]
interfaces = ["{iface}"]

[checkers.ipmi]
{ipmi}
[checkers.hypervisor]
libvirt_processes = ["libvirtd-{self.tag}"]
nova_compute_processes = ["nova-compute-{self.tag}"]
libvirt_sockets = ["{sock}"]
qemu_processes = ["qemu-system-bench-{self.tag}"]
qemu_pid_dir = "{self.tmp / 'qemu'}"

[checkers.exec.commands.trivial]
argv = ["{check}"]
''')
        if self.only:  # keep only the chosen checkers' tables (to see where the cost goes)
            head, *tables = cfg.read_text().split("\n[checkers.")
            keep = [t for t in tables if t.split("]")[0].split(".")[0] in self.only]
            cfg.write_text("\n[checkers.".join([head, *keep]))
        return str(cfg)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if self.netns:
            subprocess.run(["ip", "netns", "del", self.netns], stderr=subprocess.DEVNULL)


async def measure(seconds: float, only: set[str] | None = None, agent_keys: str = "",
                  server_keepalive_ms: int = SERVER_KEEPALIVE_MS, ipmi: str = "local",
                  heartbeat_ms: int = HEARTBEAT_MS) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="doctor-bench-agent-") as tmpdir:
        tmp = Path(tmpdir)
        host = Host(tmp, only, ipmi)
        host.extra = agent_keys
        # as the inspector: its keepalive pings the agent, and it permits the agent's pings
        server = grpc.aio.server(options=server_options(keepalive_ms=server_keepalive_ms))
        gw = Gateway(heartbeat_ms)
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(gw, server)
        server.add_insecure_port(f"unix:{tmp / 'gw.sock'}")
        await server.start()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp / "notify"))
        notify.setblocking(False)
        agent: subprocess.Popen[bytes] | None = None
        try:
            cfg = host.setup()
            env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify"))
            t_start = time.monotonic()
            agent = subprocess.Popen(host.wrap([PY, "-m", "agent", "--config", cfg]), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            ps = psutil.Process(agent.pid)
            await anotify_until(lambda: arecv(notify, 60), "READY=1")
            ready_s = time.monotonic() - t_start
            peak_rss = ps.memory_info().rss
            cpu0, loop0, t0 = ps.cpu_times(), event_loop_cpu_s(agent.pid), time.monotonic()
            heartbeats0 = gw.heartbeats
            deadline = t0 + seconds
            samples = []
            while time.monotonic() < deadline:
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                mem = ps.memory_full_info()
                peak_rss = max(peak_rss, mem.rss)
                samples.append(mem)
                if agent.poll() is not None:
                    raise RuntimeError(f"agent exited with {agent.returncode}")
            cpu1, loop1, t1 = ps.cpu_times(), event_loop_cpu_s(agent.pid), time.monotonic()
            wall = t1 - t0
            # the whole process, threads that ended during the window included (a thread per pyghmi call)
            own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
            children = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
            last = samples[-1]
            return {
                "bench": "agent_footprint", "seconds": round(wall, 1), "netns": host.netns is not None,
                "ipmi": "in-band" if ipmi == "local" else "lan", "heartbeat_ms": heartbeat_ms,
                # in-band without a device every poll fails at open: the code runs, no BMC traffic
                "ipmi_device": os.path.exists("/dev/ipmi0") if ipmi == "local" else True,
                "rss_mb": round(peak_rss / 2**20, 1), "uss_mb": round(last.uss / 2**20, 1),
                "pss_mb": round(last.pss / 2**20, 1), "cpu_pct": round(100 * own / wall, 3),
                "cpu_children_pct": round(100 * children / wall, 3),
                "cpu_event_loop_pct": round(100 * (loop1 - loop0) / wall, 3), "ready_s": round(ready_s, 2),
                "threads": ps.num_threads(), "events": gw.events, "heartbeats": gw.heartbeats - heartbeats0,
                "target_rss_mb": TARGET_RSS_MB, "target_cpu_pct": TARGET_CPU_PCT,
                "ok": peak_rss / 2**20 < TARGET_RSS_MB and 100 * own / wall < TARGET_CPU_PCT,
            }
        finally:
            if agent is not None:
                if agent.poll() is None:
                    agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            notify.close()
            await server.stop(0)
            host.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="measure 15 s per run instead of 60 s")
    p.add_argument("--seconds", type=float, help="measurement window after READY (default 60, --quick 15)")
    p.add_argument("--ipmi", choices=("both", "local", "lan"), default="both",
                   help="which ipmi runs: in-band (local, the default config), LAN, or both (default)")
    p.add_argument("--only", help="what-if: comma-separated checkers to run (default: all four)")
    p.add_argument("--heartbeat-ms", type=int, default=HEARTBEAT_MS,
                   help=f"what-if: the inspector's heartbeat interval (default {HEARTBEAT_MS})")
    p.add_argument("--keepalive-ms", type=int, help="what-if: the agent's keepalive_ms (default 1000)")
    p.add_argument("--server-keepalive-ms", type=int, default=SERVER_KEEPALIVE_MS,
                   help=f"what-if: the gateway's keepalive pings (the inspector's: {SERVER_KEEPALIVE_MS})")
    args = p.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    keys = f"keepalive_ms = {args.keepalive_ms}\n" if args.keepalive_ms is not None else ""
    only = set(args.only.split(",")) if args.only else None
    runs = ["local", "lan"] if args.ipmi == "both" else [args.ipmi]
    results = {}
    for ipmi in runs:
        print(f"agent footprint, ipmi {'in-band' if ipmi == 'local' else 'over the LAN'}: "
              f"{args.only or 'every checker'} at default intervals for {seconds:g}s after READY ...", flush=True)
        r = asyncio.run(measure(seconds, only, keys, args.server_keepalive_ms, ipmi, args.heartbeat_ms))
        print(f"  peak RSS {r['rss_mb']} MB (target < {TARGET_RSS_MB:g}), USS {r['uss_mb']} MB, "
              f"CPU {r['cpu_pct']}% of one core (target < {TARGET_CPU_PCT:g}), "
              f"check scripts {r['cpu_children_pct']}%; {r['heartbeats']} heartbeats", flush=True)
        results[ipmi] = r
    result = dict(results[runs[0]])
    if len(runs) == 2:
        lan = results["lan"]
        result.update({f"lan_{k}": lan[k] for k in ("rss_mb", "uss_mb", "pss_mb", "cpu_pct", "cpu_event_loop_pct",
                                                    "threads", "ready_s", "ok")})
    for name in ("only", "keepalive_ms"):
        if getattr(args, name) is not None:
            result[name] = getattr(args, name)
    if args.server_keepalive_ms != SERVER_KEEPALIVE_MS:
        result["server_keepalive_ms"] = args.server_keepalive_ms
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

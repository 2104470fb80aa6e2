"""The lab with replicated inspectors: N ``doctor-inspector`` processes campaigning in etcd.

``HaLab`` is a ``Lab`` (namespaced hosts, virtual BMCs, agents) whose
inspector is not in-process but N replica processes (``python -m
inspector.main``), so a test or bench can SIGKILL, SIGSTOP or restart the
leader. Each replica has its own config (an ``[etcd]`` table on the caller's
etcd, a prefix of the lab's own, TTL 1 s by default), its own TCP port for
consumers and its own unix socket for agents; the replicas share the inventory
and the embedded controller's SQLite state (on one machine that is the shared
controller). Every agent lists every replica's socket. The etcd cluster is the
caller's: this module does not import the tests' fixtures.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor_common.api import diagnostics_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import PY, Lab, free_port, wait_for


@dataclass
class Replica:
    index: int
    port: int
    socket: Path
    config: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def node_id(self) -> str:
        return f"replica-{self.index}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class HaLab(Lab):
    def __init__(self, etcd_endpoints: list[str], replicas: int = 2, *, prefix: str | None = None,
                 lease_ttl_s: int = 1, takeover_grace_ms: int = 3000, agent_max_backoff_s: float = 0.3,
                 call_timeout_s: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.etcd_endpoints = list(etcd_endpoints)
        self.prefix = prefix or f"/nfv-doctor-lab/{self.tag}-{secrets.token_hex(4)}"
        self.lease_ttl_s = lease_ttl_s
        self.takeover_grace_ms = takeover_grace_ms
        self.agent_max_backoff_s = agent_max_backoff_s
        self.call_timeout_s = call_timeout_s  # > etcd's raft election stall (≈0.3 s fast timing, ≈1.6 s default)
        self.replicas = [Replica(i, free_port(), self.dir / f"inspector-{i}.sock", self.dir / f"inspector-{i}.toml",
                                 self.dir / f"inspector-{i}.log") for i in range(replicas)]
        self.endpoint = self.replicas[0].endpoint

    @property
    def endpoints(self) -> list[str]:
        """Every replica's consumer endpoint (what a consumer is configured with)."""
        return [r.endpoint for r in self.replicas]

    def etcd_table(self) -> str:
        eps = ", ".join(f'"{e}"' for e in self.etcd_endpoints)
        return (f'[etcd]\nendpoints = [{eps}]\nprefix = "{self.prefix}"\nlease_ttl_s = {self.lease_ttl_s}\n'
                f'step_down_margin_s = 0.2\ncall_timeout_s = {self.call_timeout_s}\nwrite_deadline_s = 6.0\n')

    def write_files(self) -> Path:
        super().write_files()  # inventory, BMC password, the single-inspector files (rewritten below)
        for r in self.replicas:
            r.config.write_text(
                f'[inspector]\nnode_id = "{r.node_id}"\nlisten = ["{r.endpoint}", "unix:{r.socket}"]\n'
                f'advertise = "{r.endpoint}"\nadvertise_agents = "unix:{r.socket}"\n'
                f'heartbeat_interval_ms = {self.heartbeat_interval_ms}\nliveness_timeout_ms = {self.liveness_timeout_ms}\n'
                f'takeover_grace_ms = {self.takeover_grace_ms}\nlog_level = "info"\n\n'
                f'[controller]\nbackend = "embedded"\n[controller.embedded]\ninventory = "inventory.toml"\n\n'
                f'[fencing]\ntimeout_s = 3.0\nipmi_retry_ms = 20\n\n'
                f'{self.etcd_table()}\n{self.extra_config}\n{self.auth_tables()}')
        self.write_agent_files([f"unix:{r.socket}" for r in self.replicas],
                               f"max_backoff_s = {self.agent_max_backoff_s}\n", log_level="info")
        return self.replicas[0].config

    # -- replicas ------------------------------------------------------------------------------

    async def start_replica(self, i: int, env: dict[str, str] | None = None, timeout: float = 20.0) -> Replica:
        """Start replica ``i`` (``env``: e.g. a test hook) and wait until it serves gRPC."""
        r = self.replicas[i]
        cmd = [PY, "-m", "inspector.main", "--config", str(r.config)]
        setpriv = shutil.which("setpriv")
        if setpriv:  # dies with this process, even if it is SIGKILLed
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(r.log, "ab") as log:
            r.proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log,
                                                          env={**os.environ, **(env or {})})

        async def serving() -> bool:
            if not r.running:
                raise RuntimeError(f"replica {i} exited: {self.replica_log(i)[-2000:]}")
            return await self.status(i) is not None
        await wait_for(serving, timeout, 0.05, f"replica {i} to serve")
        return r

    async def status(self, i: int, timeout: float = 1.0) -> diagnostics_pb2.StatusReport | None:
        """Replica ``i``'s Diagnostics report; None when it does not answer."""
        import grpc

        if not self.replicas[i].running:
            return None
        async with DoctorClient(self.replicas[i].endpoint, self.tokens["admin"]) as c:
            try:
                return await c.status(timeout=timeout)
            except grpc.aio.AioRpcError:
                return None

    async def leader(self) -> int | None:
        """The replica that says it leads, if exactly one does."""
        reports = await asyncio.gather(*(self.status(r.index) for r in self.replicas))
        leaders = [i for i, s in enumerate(reports) if s is not None and s.role == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    async def wait_leader(self, timeout: float = 15.0, exclude: tuple[int, ...] = ()) -> int:
        async def one() -> tuple[int] | None:  # a tuple: replica 0 must count as found
            i = await self.leader()
            return (i,) if i is not None and i not in exclude else None
        found: tuple[int] = await wait_for(one, timeout, 0.02, "a leading replica")
        return found[0]

    async def wait_agents(self, timeout: float = 30.0, on: int | None = None) -> None:
        """Every agent connected (and up) to the leader (or to replica ``on``)."""
        async def all_up() -> bool:
            i = on if on is not None else await self.leader()
            s = await self.status(i) if i is not None else None
            if s is None or s.role != "leader":
                return False
            agents = {a.host_id: a for a in s.agents}
            return all(n in agents and agents[n].connected and agents[n].liveness == "up" for n in self.hosts)
        await wait_for(all_up, timeout, 0.05, "every agent to connect to the leader")

    async def kill_replica(self, i: int) -> float:
        """SIGKILL replica ``i``; returns when (monotonic) it was sent."""
        r = self.replicas[i]
        assert r.proc is not None
        t = time.monotonic()
        r.proc.kill()
        await r.proc.wait()
        return t

    def pause_replica(self, i: int) -> None:
        assert self.replicas[i].proc is not None
        os.kill(self.replicas[i].proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume_replica(self, i: int) -> None:
        assert self.replicas[i].proc is not None
        os.kill(self.replicas[i].proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    def replica_log(self, i: int) -> str:
        p = self.replicas[i].log
        return p.read_text(errors="replace") if p.exists() else ""

    # -- the whole lab -------------------------------------------------------------------------

    async def start(self, agents: bool = True, first_env: dict[str, str] | None = None) -> None:
        """BMCs, then replica 0 (with ``first_env``) until it leads, then the others, then the agents.

        Replica 0 is started alone so it is the first leader: a test hook given in ``first_env`` thus
        arms exactly the leader, and the replicas that take over run without it.
        """
        # BMCs first: the inventory names the ports they really bound
        await asyncio.gather(*(self.start_bmc(h) for h in self.hosts.values()))
        self.write_files()
        if self.use_netns:
            self.setup_netns()
        await self.start_replica(0, first_env)
        await self.wait_leader()
        await asyncio.gather(*(self.start_replica(r.index) for r in self.replicas[1:]))
        if agents:
            await asyncio.gather(*(self.start_agent(h) for h in self.hosts.values()))
            await self.wait_agents()

    async def close(self) -> None:
        procs = [r.proc for r in self.replicas if r.running]
        for p in procs:
            assert p is not None
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
        for p in procs:
            assert p is not None
            try:
                await asyncio.wait_for(p.wait(), 5)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
        await super().close()


class LocalEtcd:
    """One etcd member on loopback in a temporary directory (for the demo and benches; tests use their
    fixtures). Fast raft timing, so etcd grants the 1 s lease TTL the lab asks for."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="doctor-etcd-"))
        self.port, self.peer_port = free_port(), free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self.port}"]

    async def start(self, timeout: float = 20.0) -> "LocalEtcd":
        binary = self.binary()
        if binary is None:
            raise FileNotFoundError("etcd is not installed (apt-get install etcd-server)")
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer_port}"
        with open(self.dir / "etcd.log", "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                binary, "--name", "demo", "--data-dir", str(self.dir / "data"), "--listen-client-urls", client,
                "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"demo={peer}", "--heartbeat-interval", "50", "--election-timeout", "250",
                "--log-level", "warn", "--logger", "zap", stdout=log, stderr=log)

        def answers() -> bool:  # a linearizable read: the member has elected itself and serves
            req = urllib.request.Request(f"{client}/v3/kv/range", data=json.dumps({"key": "aGVhbHRo"}).encode())
            try:
                with urllib.request.urlopen(req, timeout=0.5) as r:
                    return "header" in json.loads(r.read())
            except (OSError, ValueError):
                return False

        async def ready() -> bool:
            if self.proc is None or self.proc.returncode is not None:
                raise RuntimeError(f"etcd exited: {(self.dir / 'etcd.log').read_text(errors='replace')[-1000:]}")
            return await asyncio.to_thread(answers)
        await wait_for(ready, timeout, 0.05, "etcd to serve")
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

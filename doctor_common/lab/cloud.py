"""A whole small cloud on this machine, for the demo, integration tests and benches.

Each host is a network namespace whose ``eth0`` is one end of a veth pair (the
other end stays in the root namespace, where a test cuts the link), with its
own agent process inside the namespace and its own virtual BMC process on a
loopback UDP port. Agents reach the inspector over a unix socket, which
crosses namespaces the way a management network survives a data-NIC failure.
Everything is removed by ``close()``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doctor_common.lab.vbmc import read_state, write_sensors

PY = sys.executable
# for benches that fence the same host again and again: the fleet guard's budgets would pace them
NO_FENCING_BUDGET = ("[guard]\nfence_burst = 100000\nfence_rate_per_minute = 100000\n"
                     "fleet_fence_burst = 100000\nfleet_fence_rate_per_minute = 100000\n")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# pyghmi routes replies by BMC address through process-wide tables, so a BMC
# address that an earlier (now dead) session used must not come back in the
# same process: its replies would go to the stale session.
_BMC_PORTS_USED: set[int] = set()


def fresh_bmc_port() -> int:
    """A free loopback UDP port never handed out to a BMC before in this process."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        if port not in _BMC_PORTS_USED:
            _BMC_PORTS_USED.add(port)
            return port
    raise RuntimeError("no fresh UDP port for a virtual BMC")


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.002,
                   what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(interval)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class LabHost:
    name: str
    netns: str
    link: str                    # root-namespace end of the veth pair: cut this
    bmc_port: int
    bmc_state: Path
    agent_token: str
    servers: list[str] = field(default_factory=list)
    bmc_proc: asyncio.subprocess.Process | None = None
    agent_proc: asyncio.subprocess.Process | None = None


class Lab:
    def __init__(self, hosts: int = 3, servers_per_host: int = 2, projects: tuple[str, ...] = ("project-a", "project-b"),
                 unfenceable: tuple[str, ...] = (), workdir: Path | None = None, netns: bool = True,
                 liveness_timeout_ms: int = 500, heartbeat_interval_ms: int = 100, extra_config: str = "",
                 switch: str = "", fencing_timeout_s: float = 3.0, nic_interfaces: tuple[str, ...] = ("eth0",),
                 sensors: list[dict[str, Any]] | None = None, agents_over_link: bool = False) -> None:
        self.tag = secrets.token_hex(2)
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="doctor-lab-"))
        self.own_dir = workdir is None
        self.projects = projects
        self.use_netns = netns
        self.socket = self.dir / "agent.sock"
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.bmc_password = secrets.token_urlsafe(12)
        self.tokens = {p: secrets.token_urlsafe(16) for p in (*projects, "admin")}
        self.hosts: dict[str, LabHost] = {}
        self.server_owner: dict[str, str] = {}
        self.unfenceable = set(unfenceable)
        self.liveness_timeout_ms = liveness_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.extra_config = extra_config  # appended inside [fencing]: keys for it first, then tables of its own
        self.switch = switch              # every host behind this top-of-rack switch (a rack)
        self.fencing_timeout_s = fencing_timeout_s
        self.nic_interfaces = nic_interfaces  # what each agent's nic checker watches (eth0 is the veth)
        # sensors: each host's virtual BMC serves these (write_sensors' format) and its agent's ipmi checker reads
        # them over the LAN; agents outside namespaces only (the BMCs listen on the root namespace's loopback)
        self._sensor_spec = sensors
        # agents_over_link: each agent speaks TCP to the inspector over its own veth (a link-local /30 on the test's
        # veth pair, nowhere else), so cutting the link silences the agent's connection itself, as a dead host or
        # switch does; otherwise agents use the inspector's unix socket and a cut is seen by their nic checker
        self.agents_over_link = agents_over_link
        self.agent_port = free_port() if agents_over_link else 0
        if agents_over_link and not netns:
            raise ValueError("agents_over_link needs network namespaces (netns=True)")
        if sensors is not None and netns:
            raise ValueError("a lab with sensors runs its agents outside network namespaces (netns=False)")
        k = 0  # owners round-robin across all servers, so hosts mix projects differently
        for i in range(1, hosts + 1):
            name = f"compute-{i}"
            h = LabHost(name, f"dl{self.tag}-{i}", f"dl{self.tag}h{i}", fresh_bmc_port(),
                        self.dir / f"{name}.bmc", secrets.token_urlsafe(16))
            for j in range(servers_per_host):
                sid = f"vm-{i}-{j + 1}"
                h.servers.append(sid)
                self.server_owner[sid] = projects[k % len(projects)]
                k += 1
            self.hosts[name] = h
        self.inspector: Any = None
        self._created_netns: list[str] = []
        self.sensors = ({h: [dict(x) for x in self._sensor_spec] for h in self.hosts}
                        if self._sensor_spec is not None else None)

    # -- files ---------------------------------------------------------------------------------

    def write_files(self) -> Path:
        for name, secret in (("bmc.pass", self.bmc_password), ("bad.pass", "not-the-password")):
            (self.dir / name).write_text(secret)
            (self.dir / name).chmod(0o600)  # secrets readable by their owner only (the config refuses others)
        inv = []
        for h in self.hosts.values():
            pw = "bad.pass" if h.name in self.unfenceable else "bmc.pass"
            switch = f'switch = "{self.switch}"\n' if self.switch else ""
            inv.append(f'[[hosts]]\nname = "{h.name}"\nzone = "lab"\n{switch}[hosts.bmc]\naddress = "127.0.0.1"\n'
                       f'port = {h.bmc_port}\nusername = "admin"\npassword_file = "{pw}"\n')
        for h in self.hosts.values():
            for sid in h.servers:
                owner = self.server_owner[sid]
                inv.append(f'[[servers]]\nid = "{sid}"\nname = "{sid}"\nhost = "{h.name}"\nproject_id = "{owner}"\n')
                inv.append(f'[[ports]]\nid = "port-{sid}"\nhost = "{h.name}"\nproject_id = "{owner}"\ndevice_id = "{sid}"\n')
        (self.dir / "inventory.toml").write_text("\n".join(inv))
        cfg = self.dir / "inspector.toml"
        links = "".join(f', "{self.link_address(h, 1)}:{self.agent_port}"' for h in self.hosts.values()
                        ) if self.agents_over_link else ""
        tls = "[tls]\nplaintext = true  # the test's own veth pairs, link-local\n" if self.agents_over_link else ""
        cfg.write_text(
            f'[inspector]\nnode_id = "lab-inspector"\nlisten = ["{self.endpoint}", "unix:{self.socket}"{links}]\n'
            f'heartbeat_interval_ms = {self.heartbeat_interval_ms}\nliveness_timeout_ms = {self.liveness_timeout_ms}\n'
            f'log_level = "warning"\n\n'
            f'[controller]\nbackend = "embedded"\n[controller.embedded]\ninventory = "inventory.toml"\n'
            f'state = "embedded.sqlite"\n\n[fencing]\ntimeout_s = {self.fencing_timeout_s}\nipmi_retry_ms = 20  # virtual BMCs on loopback answer in ~1 ms\n\n{self.extra_config}\n{tls}{self.auth_tables()}')
        self.write_agent_files([f"unix:{self.socket}"])
        return cfg

    def link_address(self, h: LabHost, end: int) -> str:
        """The link-local address of the host's veth pair: end 1 the root side (the inspector), 2 the host's."""
        return f"169.254.{list(self.hosts).index(h.name) + 1}.{end}"

    def auth_tables(self) -> str:
        """[[auth.consumers]] for every project and admin, [[auth.agents]] for every host."""
        consumers = "".join(
            f'[[auth.consumers]]\nname = "{p}"\ntoken = "{t}"\n' + ('admin = true\n' if p == "admin" else f'project = "{p}"\n')
            for p, t in self.tokens.items())
        return consumers + "".join(f'[[auth.agents]]\nhost = "{h.name}"\ntoken = "{h.agent_token}"\n'
                                   for h in self.hosts.values())

    def write_agent_files(self, inspectors: list[str], agent_keys: str = "", log_level: str = "warning") -> None:
        """Each host's agent.toml. Without namespaces there is no link of the host's own to watch (lo's operstate
        is "unknown", which the nic checker rightly reports): a trivial command check stands in."""
        listed_nics = ", ".join(f'"{i}"' for i in self.nic_interfaces)
        checker = (f'[checkers.nic]\ninterfaces = [{listed_nics}]\n' if self.use_netns
                   else '[checkers.exec.commands.alive]\nargv = ["true"]\n')
        for h in self.hosts.values():
            listed = (f'"{self.link_address(h, 1)}:{self.agent_port}"' if self.agents_over_link
                      else ", ".join(f'"{e}"' for e in inspectors))
            ipmi = (f'[checkers.ipmi]\naddress = "127.0.0.1"\nport = {h.bmc_port}\nusername = "admin"\n'
                    f'password_file = "{self.dir / "bmc.pass"}"\ninterval_s = 0.1\ntimeout_s = 10\n'
                    'debounce_n = 1\ndebounce_m = 1\n' if self.sensors is not None else "")
            (self.dir / f"{h.name}.agent.toml").write_text(
                f'[agent]\nhost_id = "{h.name}"\ninspector = [{listed}]\ntoken = "{h.agent_token}"\n'
                f'heartbeat_interval_ms = {self.heartbeat_interval_ms}\n{agent_keys}log_level = "{log_level}"\n\n'
                f'{checker}{ipmi}')

    # -- parts ---------------------------------------------------------------------------------

    def setup_netns(self) -> None:
        for h in self.hosts.values():
            ip("netns", "add", h.netns)
            self._created_netns.append(h.netns)
            ip("link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            ip("link", "set", h.link, "up")
            ip("-n", h.netns, "link", "set", "lo", "up")
            ip("-n", h.netns, "link", "set", "eth0", "up")
            if self.agents_over_link:
                ip("addr", "add", f"{self.link_address(h, 1)}/30", "dev", h.link)
                ip("-n", h.netns, "addr", "add", f"{self.link_address(h, 2)}/30", "dev", "eth0")
        # pyroute2's first use (its import, its first socket) takes ~140 ms; done here, not in the first cut_link,
        # which would block the inspector's loop that long (it then rightly refuses to judge silence or fence)
        def warm() -> None:
            from pyroute2 import IPRoute  # in a thread: its sync API refuses a running event loop
            with IPRoute() as ipr:
                ipr.link_lookup(ifname=next(iter(self.hosts.values())).link)
        worker = threading.Thread(target=warm, name="lab-link-warm")
        worker.start()
        worker.join(10)

    async def start_bmc(self, h: LabHost, power: str = "on", attempts: int = 5) -> None:
        """Start the host's virtual BMC; a port taken since it was picked gets a fresh one."""
        env = dict(os.environ, VBMC_PASSWORD=self.bmc_password)
        extra: list[str] = []
        if self.sensors is not None:
            self.publish_sensors(h.name)
            extra = ["--sensors-file", str(self._sensors_file(h.name))]
        for _ in range(attempts):
            h.bmc_proc = await asyncio.create_subprocess_exec(
                PY, "-m", "doctor_common.lab.vbmc", "--port", str(h.bmc_port), "--state-file", str(h.bmc_state),
                "--power", power, *extra, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            assert h.bmc_proc.stdout is not None
            line = await asyncio.wait_for(h.bmc_proc.stdout.readline(), 15)
            if b"listening" in line:
                return
            await h.bmc_proc.wait()
            h.bmc_port = fresh_bmc_port()
        raise RuntimeError(f"virtual BMC of {h.name} did not start after {attempts} attempts")

    async def start_agent(self, h: LabHost) -> None:
        cmd = [PY, "-m", "agent", "--config", str(self.dir / f"{h.name}.agent.toml")]
        if self.use_netns:
            cmd = ["ip", "netns", "exec", h.netns, *cmd]
        log = open(self.dir / f"{h.name}.agent.log", "ab")
        h.agent_proc = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=log)
        log.close()

    async def start(self, agents: bool = True) -> None:
        from inspector.config import load_inspector_config
        from inspector.core import Inspector

        # BMCs first: the inventory names the ports they really bound
        await asyncio.gather(*(self.start_bmc(h) for h in self.hosts.values()))
        cfg_path = self.write_files()
        if self.use_netns:
            self.setup_netns()
        self.inspector = Inspector(load_inspector_config(cfg_path))
        await self.inspector.start()
        if agents:
            await asyncio.gather(*(self.start_agent(h) for h in self.hosts.values()))
            await self.wait_agents()

    async def wait_agents(self, timeout: float = 30.0) -> None:
        def all_up() -> bool:
            recs = self.inspector.liveness.hosts
            return all(n in recs and recs[n].liveness == "up" and recs[n].connected for n in self.hosts)
        await wait_for(all_up, timeout, 0.02, "every agent to connect")

    # -- fault makers --------------------------------------------------------------------------

    def _set_link(self, host: str, state: str) -> int:
        """Set the link over netlink; in a thread, since pyroute2's sync API refuses a running event loop."""
        from pyroute2 import IPRoute

        result: list[int | BaseException] = []

        def act() -> None:
            try:
                with IPRoute() as ipr:
                    index = ipr.link_lookup(ifname=self.hosts[host].link)[0]
                    t = time.time_ns()  # after the lookup: only the kernel's work is in the measured window
                    ipr.link("set", index=index, state=state)
                    result.append(t)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                result.append(exc)
        worker = threading.Thread(target=act, name="lab-link")
        worker.start()
        worker.join(10)
        if not result or isinstance(result[0], BaseException):
            raise RuntimeError(f"could not set {host}'s link {state}") from (result[0] if result else None)  # type: ignore[misc]
        return result[0]

    def cut_link(self, host: str) -> int:
        """Take the root-side end of the host's link down; returns when (ns) it was cut."""
        return self._set_link(host, "down")

    def restore_link(self, host: str) -> None:
        self._set_link(host, "up")

    def silence_host(self, host: str) -> None:
        """The host vanishes as a host or a switch dying afar does (agents_over_link): its address goes, so what
        reaches it is dropped unanswered, while the inspector's side of the link, its address and its route stay
        up. (Cutting the link instead makes the inspector's own kernel give up on the connection at once.)"""
        h = self.hosts[host]
        ip("-n", h.netns, "addr", "del", f"{self.link_address(h, 2)}/30", "dev", "eth0")

    def unsilence_host(self, host: str) -> None:
        h = self.hosts[host]
        ip("-n", h.netns, "addr", "add", f"{self.link_address(h, 2)}/30", "dev", "eth0")

    def freeze_agent(self, host: str) -> None:
        proc = self.hosts[host].agent_proc
        assert proc is not None
        # ip netns exec execs the agent, so the pid is the agent's
        os.kill(proc.pid, signal.SIGSTOP)

    def thaw_agent(self, host: str) -> None:
        proc = self.hosts[host].agent_proc
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)

    async def kill_agent(self, host: str) -> None:
        proc = self.hosts[host].agent_proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    def _sensors_file(self, host: str) -> Path:
        return self.dir / f"{host}.sensors.json"

    def publish_sensors(self, host: str) -> None:
        assert self.sensors is not None, "this lab has no sensors"
        write_sensors(self._sensors_file(host), self.sensors[host])

    def set_sensor(self, host: str, name: str, **values: Any) -> None:
        """Change one sensor of the host's BMC (e.g. value=1200 for a slowing fan): its agent reads it next."""
        assert self.sensors is not None, "this lab has no sensors"
        next(s for s in self.sensors[host] if s["name"] == name).update(values)
        self.publish_sensors(host)

    def freeze_bmc(self, host: str) -> None:
        """The host's BMC stops answering (SIGSTOP): a dead BMC, as fencing sees it."""
        proc = self.hosts[host].bmc_proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    def thaw_bmc(self, host: str) -> None:
        proc = self.hosts[host].bmc_proc
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGCONT)

    def lose_power(self, host: str) -> None:
        """The host loses power by itself: its BMC says off without anyone having sent a power-off."""
        proc = self.hosts[host].bmc_proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGUSR1)

    async def stop_agent(self, host: str) -> None:
        """An orderly stop (systemd's SIGTERM): the agent says Goodbye and exits."""
        proc = self.hosts[host].agent_proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()

    def power(self, host: str) -> tuple[str, int]:
        """(power state, number of power-offs) as the host's BMC last wrote them."""
        return read_state(self.hosts[host].bmc_state)

    # -- teardown ------------------------------------------------------------------------------

    async def close(self) -> None:
        if self.inspector is not None:  # first, while its BMCs still answer
            await self.inspector.stop(0.2)
            self.inspector = None
        procs = []
        for h in self.hosts.values():
            for p in (h.agent_proc, h.bmc_proc):
                if p is not None and p.returncode is None:
                    try:
                        os.kill(p.pid, signal.SIGCONT)
                        p.terminate()
                    except ProcessLookupError:
                        pass
                    procs.append(p)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 5)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()
        for ns in self._created_netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for h in self.hosts.values():
            subprocess.run(["ip", "link", "del", h.link], capture_output=True)
        self._created_netns.clear()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> "Lab":
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

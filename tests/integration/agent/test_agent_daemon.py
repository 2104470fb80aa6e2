"""The whole agent: every checker streaming to a real gRPC gateway, and doctor-agent as a systemd notify service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.checkers.base import Status
from agent.config import load_agent_config
from agent.main import Agent
from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.grpcutil import server_options
from tests.conftest import NotifySocket, free_port, notify_until

from .conftest import Procs, Vbmc, unique

AGENT = [sys.executable, "-m", "agent"]


class Gateway(agent_pb2_grpc.AgentGatewayServicer):
    """A minimal real AgentGateway: keeps the Hello, the events and the latest health report; acks every batch."""

    def __init__(self) -> None:
        self.hello: agent_pb2.Hello | None = None
        self.events: list[agent_pb2.Event] = []
        self.health: agent_pb2.AgentHealth | None = None

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "hello":
                self.hello = msg.hello
            elif kind == "events":
                self.events.extend(msg.events.events)
                yield agent_pb2.GatewayMessage(ack=agent_pb2.Ack(sequence=msg.events.events[-1].sequence))
            elif kind == "health":
                self.health = msg.health


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    server = grpc.aio.server(options=server_options())  # as the inspector: permits the agent's pings
    gw = Gateway()
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(gw, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield gw, f"127.0.0.1:{port}"
    await server.stop(0)


async def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def write_config(tmp_path: Path, endpoint: str, body: str, agent: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nhost_id = "compute-1"\ninspector = ["{endpoint}"]\nlog_level = "warning"\n{agent}' + body)
    return cfg


async def test_every_checker_reaches_the_inspector(tmp_path: Path, vbmc: Vbmc, procs: Procs,
                                                   gateway: tuple[Gateway, str]) -> None:
    """nic, ipmi, hypervisor and exec levels arrive in Hello; a script turning critical arrives as an event;
    the agent reports its checkers' runs (AgentHealth) on the stream."""
    gw, endpoint = gateway
    libvirtd = unique("libvirtd")
    procs.named(libvirtd)
    status = tmp_path / "status"
    status.write_text("0")
    check = tmp_path / "check"
    check.write_text(f'#!/bin/sh\ncode=$(cat {status})\necho "state $code"\nexit $code\n')
    check.chmod(0o755)
    cfg = write_config(tmp_path, endpoint, f'''
[checkers.nic]
interfaces = ["lo"]
[checkers.ipmi]
address = "127.0.0.1"
port = {vbmc.port}
password_file = "{vbmc.password_file}"
interval_s = 0.2
[checkers.hypervisor]
libvirt_processes = ["{libvirtd}"]
nova_compute_processes = []
libvirt_sockets = []
qemu_pid_dir = ""
[checkers.exec]
interval_s = 0.05
[checkers.exec.commands.probe]
argv = ["{check}"]
''', agent="health_interval_s = 0.1\n")
    agent = Agent(load_agent_config(cfg))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        await wait_for(lambda: agent.ready.is_set() and agent.link.connected.is_set(), what="ready and connected")
        # the Hello of a later reconnect carries the full level; here: the level the agent holds
        components = {c.component: c for c in agent.state.hello().hello.components}
        assert {"nic:lo", "ipmi:bmc", "ipmi:CPU1 Temp", "hypervisor:libvirtd", "exec:probe"} <= set(components)
        assert {c.checker for c in components.values()} == {"nic", "ipmi", "hypervisor", "exec"}
        assert gw.hello is not None and gw.hello.host_id == "compute-1"
        status.write_text("2")
        # (a first, healthy exec:probe event comes before it when the Hello went out before the first run)
        await wait_for(lambda: any(e.state.component == "exec:probe" and e.state.status != Status.OK
                                   for e in gw.events), what="exec event")
        event = next(e for e in gw.events if e.state.component == "exec:probe" and e.state.status != Status.OK)
        assert (event.state.status, event.state.fault_type, event.state.description) == \
            (Status.FAULT, "compute.host.exec.probe", "state 2")
        await wait_for(lambda: not agent.state.unacked, what="acks")
        # the report on the stream says what the last exec runs said: status 2 is a fault
        await wait_for(lambda: gw.health is not None and any(
            k.check == "probe" and k.recent and k.recent[-1].outcome == "fault"
            for c in gw.health.checkers for k in c.checks), what="a health report with the fault run")
        assert gw.health is not None
        checkers = {c.checker: c for c in gw.health.checkers}
        assert set(checkers) == {"nic", "ipmi", "hypervisor", "exec"} and not checkers["nic"].checks
        assert {k.check for k in checkers["ipmi"].checks} >= {"bmc"} and gw.health.loops_not_alive == []
    finally:
        stop.set()
        await asyncio.wait_for(run, 10)


def test_doctor_agent_is_a_notify_service(tmp_path: Path, notify: NotifySocket) -> None:
    """The real daemon: READY=1 once checkers run, WATCHDOG=1 pings, STOPPING=1 and exit 0 on SIGTERM;
    exec checks do not inherit NOTIFY_SOCKET."""
    env_dump = tmp_path / "env"
    check = tmp_path / "check"
    check.write_text(f"#!/bin/sh\nenv > {env_dump}\necho OK\n")
    check.chmod(0o755)
    cfg = write_config(tmp_path, f"127.0.0.1:{free_port()}",
                       f'[checkers.nic]\ninterfaces = ["lo"]\n[checkers.exec.commands.env]\nargv = ["{check}"]\n')
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([*AGENT, "--config", str(cfg)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        messages = notify_until(notify.recv, "READY=1")
        assert "STATUS=2 checkers running" in messages[-1]
        assert [notify.recv() for _ in range(3)] == ["WATCHDOG=1"] * 3  # every ~0.2 s
        proc.send_signal(signal.SIGTERM)
        *pings, _ = notify_until(notify.recv, "STOPPING=1")
        assert set(pings) <= {"WATCHDOG=1"}
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    assert "Traceback" not in stderr, stderr
    inherited = env_dump.read_text()
    assert "NOTIFY_SOCKET" not in inherited and "WATCHDOG_USEC" not in inherited


def test_check_config_validates_every_checker(tmp_path: Path) -> None:
    """--check-config builds every checker from its table: good exits 0, a bad key exits 2 naming file and key."""
    good = write_config(tmp_path, "127.0.0.1:1", '''
[checkers.nic]
interfaces = ["lo"]
[checkers.ipmi]
address = "10.0.0.5"
password = "x"
[checkers.hypervisor]
[checkers.exec.commands.t]
argv = ["true"]
''')
    ok = subprocess.run([*AGENT, "--config", str(good), "--check-config"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "checkers: nic, ipmi, hypervisor, exec" in ok.stdout
    for body, key in [('[checkers.ipmi]\naddress = "10.0.0.5"\n', "checkers.ipmi.password"),
                      ('[checkers.ipmi]\ninterface = "serial"\n', "checkers.ipmi.interface"),
                      ('[checkers.hypervisor]\nlibvirt_sockets = ["relative"]\n',
                       "checkers.hypervisor.libvirt_sockets[0]"),
                      ('[checkers.hypervisor]\ndebounce_n = 5\n', "checkers.hypervisor.debounce_n"),
                      ('[checkers.exec]\n', "checkers.exec.commands"),
                      ('[checkers.nic]\ninterfaces = ["lo", "eht9"]\n', "checkers.nic.interfaces"),
                      ('[checkers.smart]\n', "checkers.smart")]:
        bad = write_config(tmp_path, "127.0.0.1:1", body)
        res = subprocess.run([*AGENT, "--config", str(bad), "--check-config"], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2 and f"{bad}: {key}:" in res.stderr, (key, res.stderr)
        if key == "checkers.nic.interfaces":  # a typo is named, not only the key
            assert "'eht9' does not exist on this host" in res.stderr and "'lo'" not in res.stderr


# What the daemon must not load (docs/agent.md, "Footprint"): each was megabytes of RSS, grpcio 10 MB and
# five threads (the agent speaks gRPC with grpclib).
HEAVY = ("pyroute2", "pyghmi.ipmi.command", "importlib.metadata", "grpc", "grpc_health", "grpc_reflection")


@pytest.mark.parametrize("ipmi", ["lan", "local"])
def test_the_daemon_keeps_heavy_modules_out(tmp_path: Path, notify: NotifySocket, vbmc: Vbmc, ipmi: str) -> None:
    """Every checker running (READY=1 comes after each reported once): none of the heavy modules was imported,
    Python's ssl (and its libssl) is not mapped; in-band, not even the LAN session's cryptography is loaded."""
    check = tmp_path / "check"
    check.write_text("#!/bin/sh\necho OK\n")
    check.chmod(0o755)
    bmc = (f'address = "127.0.0.1"\nport = {vbmc.port}\npassword_file = "{vbmc.password_file}"\n' if ipmi == "lan"
           else f'device = "{tmp_path / "ipmi0"}"\n')
    cfg = write_config(tmp_path, f"127.0.0.1:{free_port()}", f'''
[checkers.nic]
interfaces = ["lo"]
[checkers.ipmi]
{bmc}[checkers.hypervisor]
libvirt_processes = ["{unique("libvirtd")}"]
[checkers.exec.commands.ok]
argv = ["{check}"]
''')
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.Popen([*AGENT, "--config", str(cfg)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        notify_until(notify.recv, "READY=1")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    imported = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "pyghmi.ipmi.sdr" in imported and "agent.checkers.rtnetlink" in imported  # the checkers did run
    assert "grpclib.client" in imported
    loaded = sorted(m for m in imported if m in HEAVY or m.startswith(tuple(f"{h}." for h in HEAVY)))
    assert loaded == []
    assert ("cryptography" in imported) == (ipmi == "lan")
    assert "/_ssl." not in maps and "/libssl.so" not in maps  # the import was refused, not only logged

"""Real counterparts for the agent's checkers: a pyghmi BMC subprocess, processes, sockets, scripts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.checkers.base import Reading
from doctor_common.config import Section
from doctor_common.lab.cloud import fresh_bmc_port
from doctor_common.lab.vbmc import start_vbmc, write_sensors

HEALTHY_SENSORS: list[dict[str, Any]] = [
    {"name": "CPU1 Temp", "type": "temperature", "value": 45, "unc": 80, "uc": 90, "unr": 100},
    {"name": "FAN1", "type": "fan", "value": 5400, "m": 100, "lnc": 1500, "lc": 1000},
    {"name": "PSU1", "type": "power_supply", "states": [0]},
    {"name": "PSU2", "type": "power_supply", "absent": True},
    {"name": "DIMM A1", "type": "memory", "states": [6]},
    {"name": "CPU1", "type": "processor", "states": [7]},
    {"name": "P12V", "type": "voltage", "value": 12, "unc": 13, "lnc": 11},
]


@dataclass
class Vbmc:
    port: int
    password_file: Path
    sensors_file: Path
    proc: subprocess.Popen[bytes]
    sensors: list[dict[str, Any]] = field(default_factory=lambda: [dict(s) for s in HEALTHY_SENSORS])
    sel: list[dict[str, Any]] = field(default_factory=list)

    def set(self, name: str, **values: Any) -> None:
        """Change one sensor (e.g. value=95 or states=[0, 1]) and publish the file."""
        next(s for s in self.sensors if s["name"] == name).update(values)
        self.publish()

    def log(self, sensor: str, offset: int, deassert: bool = False) -> None:
        """Append a SEL entry."""
        self.sel.append({"sensor": sensor, "offset": offset, "deassert": deassert})
        self.publish()

    def clear_sel(self) -> None:
        self.sel = []
        self.publish()

    def publish(self) -> None:
        write_sensors(self.sensors_file, self.sensors, self.sel)

    def section(self, **extra: Any) -> Section:
        # a generous timeout: pyghmi's I/O thread can miss a wake-up and stall a command ~1 s (docs/agent.md)
        data = {"address": "127.0.0.1", "port": self.port, "password_file": str(self.password_file),
                "interval_s": 0.05, "timeout_s": 10.0, "debounce_n": 1, "debounce_m": 1, **extra}
        return Section(self.password_file.parent / "agent.toml", data, "checkers.ipmi.")


@pytest.fixture
def vbmc(tmp_path: Path) -> Iterator[Vbmc]:
    password = tmp_path / "bmc.pw"
    password.write_text(f"{uuid.uuid4().hex}\n")
    password.chmod(0o600)
    sensors = tmp_path / "sensors.json"
    write_sensors(sensors, HEALTHY_SENSORS)
    port = fresh_bmc_port()  # never one an earlier session in this process talked to
    proc = start_vbmc(port, password, sensors_file=sensors, state_file=tmp_path / "power")
    bmc = Vbmc(port, password, sensors, proc)
    yield bmc
    proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
    proc.kill()
    proc.wait(5)


class Levels:
    """Runs a checker's watch() and keeps the latest reading per component."""

    def __init__(self, checker: Any) -> None:
        self.checker = checker
        self.now: dict[str, Reading] = {}
        self.history: list[Reading] = []
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> "Levels":
        async def run() -> None:
            try:
                async with aclosing(self.checker.watch()) as stream:
                    async for reading in stream:
                        self.now[reading.component] = reading
                        self.history.append(reading)
            except BaseException as exc:  # noqa: BLE001 - a test looks at it
                self.error = exc
                raise
        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def until(self, cond: Callable[[dict[str, Reading]], bool], timeout: float = 10.0,
                    what: str = "") -> dict[str, Reading]:
        try:
            async with asyncio.timeout(timeout):
                while not cond(self.now):
                    if self.error is not None:
                        raise self.error
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what or cond}; levels: "
                                 f"{ {c: (r.status.name, r.fault_type) for c, r in self.now.items()} }") from None
        return self.now


@pytest.fixture
def levels() -> Callable[[Any], Levels]:
    return Levels


@dataclass
class Procs:
    """Processes a test starts; all killed and reaped at the end."""

    tmp_path: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def named(self, argv0: str) -> subprocess.Popen[bytes]:
        """A process whose argv[0] is ``argv0`` (``exec -a``), its name stays 'sleep'."""
        return self._start(["bash", "-c", f'exec -a "{argv0}" sleep 300'])

    def script(self, name: str) -> subprocess.Popen[bytes]:
        """A Python script file called ``name`` run through its shebang (comm = the script's name)."""
        path = self.tmp_path / name
        path.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(300)\n")
        path.chmod(0o755)
        return self._start([str(path)])

    def unix_server(self, path: Path) -> subprocess.Popen[bytes]:
        """A process listening on a unix stream socket at ``path`` (accepting and closing connections)."""
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(16)\n"
                "print('ok',flush=True)\nwhile True:\n  c,_=s.accept()\n  c.close()\n")
        proc = self._start([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        return proc

    def _start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.started.append(proc)
        return proc

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                p.kill()
            p.wait(5)
            if p.stdout is not None:
                p.stdout.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.cleanup()


def unique(prefix: str) -> str:
    """A process name no other test (or engineer) on this machine uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def section(tmp_path: Path) -> Callable[..., Section]:
    def make(name: str, **data: Any) -> Section:
        return Section(tmp_path / "agent.toml", data, f"checkers.{name}.")
    return make

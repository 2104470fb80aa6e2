"""The ipmi checker against a real pyghmi BMC subprocess on 127.0.0.1 (RMCP+, SDR, sensor readings, SEL)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any

import pytest

from agent.checkers.base import Status
from agent.checkers.ipmi import UNREACHABLE, IpmiChecker
from doctor_common.api import common_pb2
from doctor_common.config import ConfigError, Section
from doctor_common.lab.cloud import fresh_bmc_port, wait_for
from doctor_common.lab.vbmc import write_sensors
from tests.conftest import pyghmi_sessions

from .conftest import Levels, Vbmc


async def test_sensor_health_becomes_levels(vbmc: Vbmc, levels: Callable[[Any], Levels]) -> None:
    """Healthy sensors are OK; a hot CPU is a temperature fault, a slow fan a warning, a failed PSU a fault."""
    async with levels(IpmiChecker.from_config(vbmc.section(), "h1")) as lv:
        now = await lv.until(lambda n: "ipmi:CPU1" in n, what="first sensor sweep")
        assert {c for c, r in now.items()} == {"ipmi:bmc", "ipmi:CPU1 Temp", "ipmi:FAN1", "ipmi:PSU1",
                                              "ipmi:DIMM A1", "ipmi:CPU1"}  # no voltage, no absent PSU2
        assert all(r.status == Status.OK for r in now.values())
        vbmc.set("CPU1 Temp", value=95)
        vbmc.set("FAN1", value=1200)
        vbmc.set("PSU1", states=[0, 1])
        now = await lv.until(lambda n: n["ipmi:PSU1"].status == Status.FAULT and
                             n["ipmi:FAN1"].status == Status.WARNING and n["ipmi:CPU1 Temp"].status == Status.FAULT)
        cpu = now["ipmi:CPU1 Temp"]
        assert (cpu.fault_type, cpu.severity) == ("compute.host.ipmi.temperature", common_pb2.SEVERITY_CRITICAL)
        assert cpu.details["value"] == "95" and "upper critical threshold" in cpu.description
        assert now["ipmi:FAN1"].fault_type == "compute.host.ipmi.fan"
        assert now["ipmi:PSU1"].fault_type == "compute.host.ipmi.power_supply"
        vbmc.set("CPU1 Temp", value=50)
        await lv.until(lambda n: n["ipmi:CPU1 Temp"].status == Status.OK, what="cooled down")


async def test_warning_is_reported_only_after_debounce(vbmc: Vbmc, levels: Callable[[Any], Levels]) -> None:
    """With 3-of-3, a fan below its warning threshold is reported after three sweeps saw it, not at the first."""
    checker = IpmiChecker.from_config(vbmc.section(debounce_n=3, debounce_m=3), "h1")
    async with levels(checker) as lv:
        await lv.until(lambda n: "ipmi:FAN1" in n)
        vbmc.set("FAN1", value=1200)
        await lv.until(lambda n: n["ipmi:FAN1"].status == Status.WARNING)
        runs = checker.stats["bmc"].recent
        saw = [i for i, r in enumerate(runs) if r.outcome == "warning"]
        # the third sweep with the warning is the one that reported it
        assert len(saw) >= 3 and all(r.outcome == "ok" for r in list(runs)[:saw[0]])


async def test_sel_entries_are_followed(vbmc: Vbmc, levels: Callable[[Any], Levels]) -> None:
    """An old SEL entry is replayed at start; new ones raise their sensor at once; deassertion and clear resolve."""
    vbmc.log("DIMM A1", 0)  # correctable ECC, before the agent starts
    async with levels(IpmiChecker.from_config(vbmc.section(debounce_n=2, debounce_m=2), "h1")) as lv:
        now = await lv.until(lambda n: "ipmi:sel:DIMM A1" in n, what="replayed SEL entry")
        assert (now["ipmi:sel:DIMM A1"].status, now["ipmi:sel:DIMM A1"].fault_type) == \
            (Status.WARNING, "compute.host.ipmi.memory")
        vbmc.log("CPU1", 0)  # processor IERR
        now = await lv.until(lambda n: "ipmi:sel:CPU1" in n, what="new SEL entry")
        assert (now["ipmi:sel:CPU1"].status, now["ipmi:sel:CPU1"].severity) == \
            (Status.FAULT, common_pb2.SEVERITY_CRITICAL)
        assert now["ipmi:sel:CPU1"].details["record_id"] == "2"
        vbmc.log("CPU1", 0, deassert=True)
        await lv.until(lambda n: n["ipmi:sel:CPU1"].status == Status.OK, what="deasserted")
        assert lv.now["ipmi:sel:DIMM A1"].status == Status.WARNING
        vbmc.clear_sel()
        await lv.until(lambda n: n["ipmi:sel:DIMM A1"].status == Status.OK, what="SEL cleared")


async def test_a_silent_bmc_is_a_warning_until_it_answers_again(vbmc: Vbmc, levels: Callable[[Any], Levels]) -> None:
    """A frozen BMC (SIGSTOP) turns ipmi:bmc into an unreachable warning; sensors keep their level; it recovers."""
    checker = IpmiChecker.from_config(vbmc.section(timeout_s=0.3), "h1")
    async with levels(checker) as lv:
        await lv.until(lambda n: "ipmi:CPU1" in n)
        vbmc.proc.send_signal(signal.SIGSTOP)
        try:
            now = await lv.until(lambda n: n["ipmi:bmc"].status == Status.WARNING, what="unreachable")
            assert (now["ipmi:bmc"].fault_type, now["ipmi:bmc"].severity) == (UNREACHABLE, common_pb2.SEVERITY_WARNING)
            assert now["ipmi:CPU1 Temp"].status == Status.OK
            await lv.until(lambda n: checker.stats["bmc"].failures >= 3)
            # pyghmi is never called twice at once: abandoned calls do not pile up threads
            assert sum(t.name == "doctor-ipmi" for t in threading.enumerate()) <= 1
            assert any("still waiting" in r.detail for r in checker.stats["bmc"].recent)
        finally:
            vbmc.proc.send_signal(signal.SIGCONT)
        await lv.until(lambda n: n["ipmi:bmc"].status == Status.OK, timeout=30, what="BMC back")


async def test_no_bmc_at_all_is_reported_fast(tmp_path: Any, levels: Callable[[Any], Levels]) -> None:
    """Nothing listens on the port: the warning comes at the timeout, not after pyghmi's own seconds."""
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    pw.chmod(0o600)
    sec = Section(tmp_path / "agent.toml", {"address": "127.0.0.1", "port": fresh_bmc_port(), "password_file": str(pw),
                                            "interval_s": 0.1, "timeout_s": 0.3, "debounce_n": 1, "debounce_m": 1},
                  "checkers.ipmi.")
    async with levels(IpmiChecker.from_config(sec, "h1")) as lv:
        now = await lv.until(lambda n: "ipmi:bmc" in n, timeout=2)
        assert now["ipmi:bmc"].fault_type == UNREACHABLE


async def test_a_bmc_without_a_sel_still_reports_its_sensors(vbmc: Vbmc, levels: Callable[[Any], Levels]) -> None:
    """SEL commands refused: the BMC is not called unreachable and sensor faults still come through."""
    write_sensors(vbmc.sensors_file, vbmc.sensors, [], sel_supported=False)
    checker = IpmiChecker.from_config(vbmc.section(), "h1")
    async with levels(checker) as lv:
        await lv.until(lambda n: "ipmi:CPU1" in n)
        next(s for s in vbmc.sensors if s["name"] == "CPU1 Temp")["value"] = 95
        write_sensors(vbmc.sensors_file, vbmc.sensors, [], sel_supported=False)
        now = await lv.until(lambda n: n["ipmi:CPU1 Temp"].status == Status.FAULT)
        assert now["ipmi:bmc"].status == Status.OK and checker.stats["bmc"].failures == 0
        assert "Invalid command" in checker.checks[0].sel_error  # type: ignore[attr-defined]


async def test_in_band_is_the_default_and_a_missing_device_is_a_warning(
        tmp_path: Any, levels: Callable[[Any], Levels]) -> None:
    """No address: the checker reads the host's own BMC through the kernel's IPMI device. Without the
    device (no ipmi_devintf, as on this machine) the BMC is reported unreachable, naming the device."""
    device = tmp_path / "ipmi0"  # absent
    sec = Section(tmp_path / "agent.toml", {"device": str(device), "interval_s": 0.1, "timeout_s": 1.0,
                                            "debounce_n": 1, "debounce_m": 1}, "checkers.ipmi.")
    checker = IpmiChecker.from_config(sec, "h1")
    assert checker.checks[0].target == str(device)
    async with levels(checker) as lv:
        now = await lv.until(lambda n: "ipmi:bmc" in n, timeout=5)
        bmc = now["ipmi:bmc"]
        assert (bmc.status, bmc.fault_type) == (Status.WARNING, UNREACHABLE)
        assert str(device) in bmc.description and "No such file" in bmc.description


def test_in_band_refuses_lan_keys(tmp_path: Any) -> None:
    sec = Section(tmp_path / "agent.toml", {"interface": "local", "address": "10.0.0.9"}, "checkers.ipmi.")
    with pytest.raises(ConfigError, match=r"checkers\.ipmi\.address: unknown key"):
        IpmiChecker.from_config(sec, "h1")


def test_a_discarded_lan_session_leaves_nothing_in_pyghmi(vbmc: Vbmc) -> None:
    """discard() logs out of a real RMCP+ session and takes it out of pyghmi's process-wide tables (it reaches
    into pyghmi's internals: a pyghmi that renamed them would leave the session behind, and this fails)."""
    from agent.checkers.ipmi_client import SensorClient
    from doctor_common.ipmi_session import discard

    client = SensorClient.lan("127.0.0.1", vbmc.port, "admin", vbmc.password_file.read_text().strip())
    assert "error" not in client.raw_command(netfn=6, command=1)  # Get Device ID: a live session
    assert pyghmi_sessions(vbmc.port), "a live session is in pyghmi's tables"
    discard(client)
    assert pyghmi_sessions(vbmc.port) == []


async def test_closing_during_a_login_leaves_no_session(vbmc: Vbmc) -> None:
    """A check closed while its login still waits for the BMC: the login that completes afterwards is logged
    out, not left in pyghmi's tables sending keepalives for the life of the agent."""
    from agent.checkers.ipmi import BmcWorker
    from agent.checkers.ipmi_client import SensorClient
    from doctor_common.ipmi_session import SessionsClosed

    password = vbmc.password_file.read_text().strip()
    worker = BmcWorker(lambda: SensorClient.lan("127.0.0.1", vbmc.port, "admin", password))
    vbmc.proc.send_signal(signal.SIGSTOP)
    try:
        call = asyncio.create_task(worker.call(lambda client: client.raw_command(netfn=6, command=1)))
        await wait_for(lambda: pyghmi_sessions(vbmc.port), 10, 0.01, "the login to start")
        await worker.close()
    finally:
        vbmc.proc.send_signal(signal.SIGCONT)  # the login completes now, after close()
    with pytest.raises(SessionsClosed, match="closed"):
        await asyncio.wait_for(call, 15)
    await wait_for(lambda: not pyghmi_sessions(vbmc.port), 5, 0.05, "pyghmi to forget the session")

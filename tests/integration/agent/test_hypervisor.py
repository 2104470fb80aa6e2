"""The hypervisor checker against real processes and a real unix socket that the tests start and kill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.checkers.base import Status
from agent.checkers.hypervisor import (
    LIBVIRTD_DOWN,
    NOVA_COMPUTE_DOWN,
    QEMU_MISSING,
    SOCKET_UNREACHABLE,
    HypervisorChecker,
)
from doctor_common.api import common_pb2
from doctor_common.config import Section

from .conftest import Levels, Procs, unique


def config(section: Callable[..., Section], **data: Any) -> HypervisorChecker:
    base = {"interval_s": 0.02, "timeout_s": 2.0, "debounce_n": 1, "debounce_m": 1}
    return HypervisorChecker.from_config(section("hypervisor", **{**base, **data}), "h1")


async def test_each_daemon_dying_is_its_own_fault(tmp_path: Path, procs: Procs, section: Callable[..., Section],
                                                 levels: Callable[[Any], Levels]) -> None:
    """libvirtd (found by argv[0]) and nova-compute (a script) alive are OK; killing each raises its own fault."""
    libvirtd, nova = unique("libvirtd"), unique("nova-compute")
    sock = tmp_path / "libvirt-sock"
    daemon = procs.named(libvirtd)
    compute = procs.script(nova)
    listener = procs.unix_server(sock)
    checker = config(section, libvirt_processes=[libvirtd], nova_compute_processes=[nova],
                     libvirt_sockets=[str(sock)], qemu_pid_dir="")
    async with levels(checker) as lv:
        now = await lv.until(lambda n: len(n) == 3 and all(r.status == Status.OK for r in n.values()),
                             what="all OK")
        assert now["hypervisor:libvirtd"].details["pids"] == str(daemon.pid)
        assert now["hypervisor:nova_compute"].details["pids"] == str(compute.pid)

        compute.kill()  # not reaped yet: a zombie is not alive
        now = await lv.until(lambda n: n["hypervisor:nova_compute"].status != Status.OK)
        r = now["hypervisor:nova_compute"]
        assert (r.status, r.fault_type, r.severity) == (Status.WARNING, NOVA_COMPUTE_DOWN, common_pb2.SEVERITY_WARNING)
        assert now["hypervisor:libvirtd"].status == Status.OK

        listener.kill()  # the socket file stays, nobody accepts
        now = await lv.until(lambda n: n["hypervisor:socket"].status != Status.OK)
        assert now["hypervisor:socket"].fault_type == SOCKET_UNREACHABLE
        assert "refused" in now["hypervisor:socket"].description.lower()

        daemon.kill()
        now = await lv.until(lambda n: n["hypervisor:libvirtd"].status != Status.OK)
        r = now["hypervisor:libvirtd"]
        assert (r.status, r.fault_type, r.severity) == (Status.FAULT, LIBVIRTD_DOWN, common_pb2.SEVERITY_MAJOR)

        procs.named(libvirtd)  # systemd restarted it: a new pid is found by a fresh scan
        sock.unlink()  # and it listens on its socket again
        procs.unix_server(sock)
        await lv.until(lambda n: n["hypervisor:libvirtd"].status == Status.OK and
                       n["hypervisor:socket"].status == Status.OK, what="libvirtd and its socket back")


async def test_healthy_host_needs_no_process_scan(procs: Procs, section: Callable[..., Section],
                                                 levels: Callable[[Any], Levels]) -> None:
    """Known pids are re-checked: while everything lives, /proc is scanned once, not every run."""
    name = unique("virtqemud")
    procs.named(name)
    checker = config(section, libvirt_processes=[name], nova_compute_processes=[], libvirt_sockets=[],
                     qemu_pid_dir="")
    check = checker.checks[0]
    async with levels(checker) as lv:
        await lv.until(lambda n: "hypervisor:libvirtd" in n)
        await lv.until(lambda n: checker.stats["processes"].runs >= 10)
    assert check.table.scans == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("debounce", [(1, 1), (2, 3)])
async def test_a_vm_whose_qemu_died_is_critical(tmp_path: Path, procs: Procs, section: Callable[..., Section],
                                               levels: Callable[[Any], Levels], debounce: tuple[int, int]) -> None:
    """A domain pid file (libvirt still runs the VM) whose qemu is gone is qemu.missing on that domain's own
    component, naming the domain and its uuid (libvirt's status XML: Nova's instance id); fewer qemus than
    qemu_min is a fault of the hypervisor; a domain libvirt dropped is cleared."""
    qemu_name = unique("qemu-system-x86_64")
    run_dir = tmp_path / "qemu"
    run_dir.mkdir()
    vm1, vm2 = procs.named(qemu_name), procs.named(qemu_name)
    (run_dir / "vm1.pid").write_text(f"{vm1.pid}\n")
    (run_dir / "vm2.pid").write_text(f"{vm2.pid}\n")
    uuid = "6c9f3d9e-1b2a-4c5d-8e7f-0a1b2c3d4e5f"
    (run_dir / "vm2.xml").write_text(f"<domstatus><domain type='kvm'><name>vm2</name><uuid>{uuid}</uuid>"
                                     "</domain></domstatus>")
    checker = config(section, libvirt_processes=[], nova_compute_processes=[], libvirt_sockets=[],
                     qemu_processes=["qemu-system-*"], qemu_pid_dir=str(run_dir), qemu_min=2,
                     debounce_n=debounce[0], debounce_m=debounce[1])
    async with levels(checker) as lv:
        now = await lv.until(lambda n: "hypervisor:qemu" in n and "domain:vm2" in n)
        assert now["hypervisor:qemu"].status == Status.OK and now["domain:vm2"].status == Status.OK
        assert now["hypervisor:qemu"].details["domains"] == "vm1,vm2"
        vm2.kill()
        vm2.wait(5)  # reaped: a zombie would still count as one of the qemu processes
        now = await lv.until(lambda n: n["domain:vm2"].status == Status.FAULT and
                             n["hypervisor:qemu"].status == Status.FAULT)
        r = now["domain:vm2"]
        assert (r.fault_type, r.severity) == (QEMU_MISSING, common_pb2.SEVERITY_CRITICAL)
        assert (r.details["domain"], r.details["uuid"]) == ("vm2", uuid) and now["domain:vm1"].status == Status.OK
        assert "expected at least 2" in now["hypervisor:qemu"].description
        (run_dir / "vm2.pid").unlink()  # libvirt noticed and cleaned up; one VM is still short of qemu_min
        now = await lv.until(lambda n: n["domain:vm2"].status == Status.OK, what="vm2 dropped: cleared")
        assert now["domain:vm2"].details["gone"] == "true"
        procs.named(qemu_name)
        await lv.until(lambda n: n["hypervisor:qemu"].status == Status.OK, what="two qemus again")


async def test_flapping_process_is_debounced(procs: Procs, section: Callable[..., Section],
                                            levels: Callable[[Any], Levels]) -> None:
    """With the default 2-of-3, one run without nova-compute (a quick restart) is not reported."""
    nova = unique("nova-compute")
    first = procs.named(nova)
    checker = config(section, nova_compute_processes=[nova], libvirt_processes=[], libvirt_sockets=[],
                     qemu_pid_dir="", debounce_n=2, debounce_m=3, interval_s=0.2)
    async with levels(checker) as lv:
        await lv.until(lambda n: "hypervisor:nova_compute" in n)
        runs = checker.stats["processes"].runs
        first.kill()
        first.wait()
        await lv.until(lambda n: checker.stats["processes"].runs > runs)  # one run saw it gone
        procs.named(nova)
        await lv.until(lambda n: checker.stats["processes"].runs > runs + 3)
        assert all(r.status == Status.OK for r in lv.history)
        outcomes = [r.outcome for r in checker.stats["processes"].recent]
        assert "warning" in outcomes  # the blip was seen, and swallowed

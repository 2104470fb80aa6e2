"""``hypervisor``: the libvirt daemon, nova-compute and each VM's qemu alive; libvirt's socket accepting.

Components and fault types (a component is off when its list is empty):

=======================  ======================================  =======  ========
component                fault type                              status   severity
=======================  ======================================  =======  ========
hypervisor:libvirtd      compute.hypervisor.libvirtd.down        FAULT    major
hypervisor:socket        compute.hypervisor.socket.unreachable   FAULT    major
hypervisor:nova_compute  compute.hypervisor.nova_compute.down    WARNING  warning
hypervisor:qemu          compute.hypervisor.qemu.missing         FAULT    critical  (fewer than qemu_min)
domain:<name>            compute.hypervisor.qemu.missing         FAULT    critical  (one per domain)
=======================  ======================================  =======  ========

A running VM keeps running when libvirt or nova-compute dies, so those are
not critical: the host can no longer be managed (the seeds' "hypervisor
failure" and "status not retrievable"). A qemu that is gone while libvirt
still lists its domain (a pid file in ``/run/libvirt/qemu``) is a dead VM:
critical for its owner. Each domain is a component of its own, its details
naming the domain and its uuid (libvirt's status XML beside the pid file;
Nova's instance id), so the inspector tells that server's owner only and sets
only that server to error.

A process matches a pattern (shell-style) by its name, its ``argv[0]``
(``exec -a``) or, for a script run by an interpreter, the script's name.
Known pids are re-checked first (pid and start time); ``/proc`` is scanned
only when one is missing, so a healthy host costs a few syscalls a run.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import psutil

from agent.checkers.base import GONE, Reading, Status
from agent.checkers.polling import Check, PollingChecker, Schedule
from doctor_common.api import common_pb2
from doctor_common.config import Section

LIBVIRTD_DOWN = "compute.hypervisor.libvirtd.down"
SOCKET_UNREACHABLE = "compute.hypervisor.socket.unreachable"
NOVA_COMPUTE_DOWN = "compute.hypervisor.nova_compute.down"
QEMU_MISSING = "compute.hypervisor.qemu.missing"
_UUID = re.compile(r"<uuid>\s*([0-9a-fA-F-]{32,36})\s*</uuid>")

DEFAULT = Schedule(interval_s=5.0, timeout_s=3.0, debounce_n=2, debounce_m=3)
INTERPRETERS = ("python*", "pypy*", "perl*", "ruby*", "sh", "bash", "dash", "node")


def proc_matches(patterns: tuple[str, ...], name: str, cmdline: list[str] | None) -> bool:
    """Whether a process (its name and command line) matches any pattern."""
    candidates = [name]
    if cmdline:
        argv0 = os.path.basename(cmdline[0])
        candidates.append(argv0)
        if any(fnmatchcase(argv0, i) for i in INTERPRETERS):
            script = next((a for a in cmdline[1:] if not a.startswith("-")), None)
            if script:
                candidates.append(os.path.basename(script))
    return any(fnmatchcase(c, p) for c in candidates if c for p in patterns)


@dataclass(frozen=True)
class Proc:
    pid: int
    create_time: float
    name: str


def _alive(proc: Proc) -> bool:
    try:
        p = psutil.Process(proc.pid)
        return p.create_time() == proc.create_time and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessTable:
    """Processes by group of patterns; cached pids are re-checked before any scan of /proc."""

    def __init__(self) -> None:
        self.known: dict[str, list[Proc]] = {}
        self.scans = 0

    def find(self, groups: dict[str, tuple[str, ...]], need: dict[str, int]) -> dict[str, list[Proc]]:
        found = {g: [p for p in self.known.get(g, []) if _alive(p)] for g in groups}
        missing = {g: pats for g, pats in groups.items() if len(found[g]) < max(need.get(g, 1), 1)}
        if missing:
            self.scans += 1
            for g in missing:
                found[g] = []
            for p in psutil.process_iter(["name", "cmdline", "status", "create_time"]):
                info = p.info
                if info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                for g, pats in missing.items():
                    if proc_matches(pats, info["name"] or "", info["cmdline"]):
                        found[g].append(Proc(p.pid, info["create_time"], info["name"] or ""))
        self.known = found
        return found

    @staticmethod
    def pid_matches(pid: int, patterns: tuple[str, ...]) -> bool:
        try:
            p = psutil.Process(pid)
            return p.status() != psutil.STATUS_ZOMBIE and proc_matches(patterns, p.name(), p.cmdline())
        except psutil.Error:
            return False


class ProcessCheck(Check):
    def __init__(self, schedule: Schedule, libvirt: tuple[str, ...], nova: tuple[str, ...], qemu: tuple[str, ...],
                 qemu_pid_dir: Path | None, qemu_min: int) -> None:
        super().__init__("processes", schedule)
        self.groups = {k: v for k, v in (("libvirtd", libvirt), ("nova_compute", nova)) if v}
        self.qemu = qemu
        self.qemu_pid_dir = qemu_pid_dir
        self.qemu_min = qemu_min
        if qemu_min > 0:
            self.groups["qemu"] = qemu
        self.table = ProcessTable()
        self._domains_seen: set[str] = set()

    def domain_uuid(self, name: str) -> str:
        """The domain's uuid from libvirt's status XML beside its pid file ("" when unreadable)."""
        if self.qemu_pid_dir is None:
            return ""
        try:
            found = _UUID.search((self.qemu_pid_dir / f"{name}.xml").read_text(errors="replace"))
        except OSError:
            return ""
        return found.group(1) if found else ""

    def domains(self) -> dict[str, int]:
        """Running domains libvirt knows of: <name>.pid files in its qemu run directory."""
        out: dict[str, int] = {}
        if self.qemu_pid_dir is None:
            return out
        try:
            files = list(self.qemu_pid_dir.glob("*.pid"))
        except OSError:
            return out
        for f in files:
            try:
                out[f.stem] = int(f.read_text().strip())
            except (OSError, ValueError):
                continue  # gone or half-written: libvirt is starting or stopping it
        return out

    def _scan(self) -> list[Reading]:
        found = self.table.find(self.groups, {"qemu": self.qemu_min})
        readings = []
        for group, fault, status, severity, what in (
                ("libvirtd", LIBVIRTD_DOWN, Status.FAULT, common_pb2.SEVERITY_MAJOR, "libvirt daemon"),
                ("nova_compute", NOVA_COMPUTE_DOWN, Status.WARNING, common_pb2.SEVERITY_WARNING, "nova-compute")):
            if group not in self.groups:
                continue
            procs = found[group]
            patterns = ", ".join(self.groups[group])
            if procs:
                readings.append(Reading(f"hypervisor:{group}", Status.OK, details={
                    "pids": ",".join(str(p.pid) for p in procs), "processes": patterns}))
            else:
                readings.append(Reading(f"hypervisor:{group}", status, fault, severity,
                                        f"no {what} process ({patterns})", {"processes": patterns}))
        if self.qemu_pid_dir is not None or self.qemu_min > 0:
            readings += self._qemu(found.get("qemu", []))
        return readings

    def _qemu(self, procs: list[Proc]) -> list[Reading]:
        domains = self.domains()
        readings = []
        for name, pid in sorted(domains.items()):
            details = {"domain": name, "uuid": self.domain_uuid(name), "pid": str(pid)}
            if self.table.pid_matches(pid, self.qemu):
                readings.append(Reading(f"domain:{name}", Status.OK, details=details))
            else:
                readings.append(Reading(f"domain:{name}", Status.FAULT, QEMU_MISSING, common_pb2.SEVERITY_CRITICAL,
                                        f"domain {name} has no qemu process: its VM is dead", details))
        for name in sorted(self._domains_seen - set(domains)):  # gone from libvirt (deleted, shut off)
            # its last word: cleared at once (not debounced), then forgotten by the agent and the inspector
            readings.append(Reading(f"domain:{name}", Status.OK, details={"domain": name, GONE: "true"}))
        self._domains_seen = set(domains)
        details = {"domains": ",".join(sorted(domains))}
        if self.qemu_min > 0:
            details["qemu_processes"] = str(len(procs))
            if len(procs) < self.qemu_min:
                readings.append(Reading("hypervisor:qemu", Status.FAULT, QEMU_MISSING, common_pb2.SEVERITY_CRITICAL,
                                        f"{len(procs)} qemu processes, expected at least {self.qemu_min}", details))
                return readings
        readings.append(Reading("hypervisor:qemu", Status.OK, details=details))
        return readings

    async def probe(self) -> list[Reading]:
        return await asyncio.to_thread(self._scan)  # psutil reads /proc: keep it off the event loop


class SocketCheck(Check):
    def __init__(self, schedule: Schedule, paths: tuple[str, ...]) -> None:
        super().__init__("socket", schedule)
        self.paths = paths

    async def probe(self) -> list[Reading]:
        errors = []
        per_try = self.schedule.timeout_s * 0.8 / len(self.paths)
        for path in self.paths:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as the
                # connection is made (gh-86296), and the checker's loop then never stops
                async with asyncio.timeout(per_try):
                    _, writer = await asyncio.open_unix_connection(path)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else 'timeout'}")
                continue
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            return [Reading("hypervisor:socket", Status.OK, details={"socket": path})]
        return [Reading("hypervisor:socket", Status.FAULT, SOCKET_UNREACHABLE, common_pb2.SEVERITY_MAJOR,
                        "libvirt socket not accepting: " + "; ".join(errors), {"sockets": ",".join(self.paths)})]

    def failed(self, why: str) -> list[Reading]:
        return [Reading("hypervisor:socket", Status.FAULT, SOCKET_UNREACHABLE, common_pb2.SEVERITY_MAJOR,
                        f"libvirt socket check: {why}", {"sockets": ",".join(self.paths)})]


class HypervisorChecker(PollingChecker):
    name = "hypervisor"

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "HypervisorChecker":
        schedule = Schedule.read(cfg, DEFAULT)
        libvirt = tuple(cfg.str_list("libvirt_processes", ["libvirtd", "virtqemud"]))
        nova = tuple(cfg.str_list("nova_compute_processes", ["nova-compute"]))
        sockets = tuple(cfg.str_list("libvirt_sockets", ["/run/libvirt/virtqemud-sock", "/run/libvirt/libvirt-sock"]))
        qemu = tuple(cfg.str_list("qemu_processes", ["qemu-system-*", "qemu-kvm"]))
        pid_dir = cfg.str("qemu_pid_dir", "/run/libvirt/qemu")
        qemu_min = cfg.int("qemu_min", 0, min=0)
        if (pid_dir or qemu_min) and not qemu:
            raise cfg.error("qemu_processes", "list the qemu process names to check qemu_pid_dir/qemu_min")
        for i, p in enumerate(sockets):
            if not p.startswith("/"):
                raise cfg.error(f"libvirt_sockets[{i}]", f"expected an absolute path, got {p!r}")
        cfg.done()
        checks: list[Check] = []
        if libvirt or nova or pid_dir or qemu_min:
            checks.append(ProcessCheck(schedule, libvirt, nova, qemu, Path(pid_dir) if pid_dir else None, qemu_min))
        if sockets:
            checks.append(SocketCheck(schedule, sockets))
        if not checks:
            raise cfg.error("libvirt_processes", "every hypervisor component is switched off")
        return cls(checks)

"""``exec``: run an operator's commands; their exit status is the health (Nagios plugin convention).

Each ``[checkers.exec.commands.NAME]`` is one component ``exec:NAME``, run as
an argv list (no shell) on its own schedule. Exit 0 is OK, 1 WARNING, 2
CRITICAL, 3 (and anything else, a timeout, a command that cannot start)
UNKNOWN. The first line of its output (stdout, else stderr), without the
performance data after ``|``, becomes the description. A command that
overruns its timeout is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

from agent.checkers.base import Reading, Status
from agent.checkers.polling import Check, PollingChecker, Schedule
from doctor_common.api import common_pb2
from doctor_common.config import Section
from doctor_common.faults import check_pattern, severity_from_name

DEFAULT = Schedule(interval_s=60.0, timeout_s=10.0, debounce_n=1, debounce_m=1)
OUTPUT_CAP = 64 * 1024   # read at most this much of a command's output
DESCRIPTION_CAP = 500


def first_line(output: bytes) -> str:
    """The plugin's status text: first line, performance data (after '|') dropped."""
    line = output.decode("utf-8", "replace").lstrip().split("\n", 1)[0]
    return line.split("|", 1)[0].strip()[:DESCRIPTION_CAP]


async def _read_capped(stream: asyncio.StreamReader | None, cap: int = OUTPUT_CAP) -> bytes:
    if stream is None:
        return b""
    data = bytearray()
    while chunk := await stream.read(65536):
        if len(data) < cap:
            data += chunk[:cap - len(data)]
    return bytes(data)  # drained to EOF, so a chatty command never blocks on a full pipe


class CommandCheck(Check):
    def __init__(self, name: str, schedule: Schedule, argv: list[str], fault_type: str,
                 warning_severity: int, critical_severity: int, cwd: str = "/") -> None:
        super().__init__(name, schedule)
        self.argv = argv
        self.fault_type = fault_type
        self.warning_severity = warning_severity
        self.critical_severity = critical_severity
        self.cwd = cwd
        self.component = f"exec:{name}"

    def result(self, code: int, text: str) -> Reading:
        details = {"command": " ".join(self.argv)[:200], "exit_status": str(code)}
        if code == 0:
            return Reading(self.component, Status.OK, description=text, details=details)
        if code == 1:
            return Reading(self.component, Status.WARNING, self.fault_type, self.warning_severity,
                           text or f"{self.name}: warning", details)
        if code == 2:
            return Reading(self.component, Status.FAULT, self.fault_type, self.critical_severity,
                           text or f"{self.name}: critical", details)
        return self.unknown(text or f"{self.name}: unknown (exit status {code})", details)

    def unknown(self, text: str, details: dict[str, str] | None = None) -> Reading:
        return Reading(self.component, Status.UNKNOWN, self.fault_type, common_pb2.SEVERITY_INDETERMINATE,
                       text, details or {"command": " ".join(self.argv)[:200]})

    async def probe(self) -> list[Reading]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=self.cwd, start_new_session=True)
        except OSError as exc:
            return [self.unknown(f"{self.name}: cannot run {self.argv[0]}: {exc.strerror or exc}")]
        try:
            out, err = await asyncio.gather(_read_capped(proc.stdout), _read_capped(proc.stderr))
            code = await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled at the timeout: the whole group goes
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await asyncio.shield(proc.wait())
        if code < 0:
            return [self.unknown(f"{self.name}: killed by signal {-code}")]
        return [self.result(code, first_line(out) or first_line(err))]

    def failed(self, why: str) -> list[Reading]:
        return [self.unknown(f"{self.name}: {why}")]


class ExecChecker(PollingChecker):
    name = "exec"

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "ExecChecker":
        default = Schedule.read(cfg, DEFAULT)
        commands = cfg.table("commands")
        if not commands:
            raise cfg.error("commands", "configure at least one command ([checkers.exec.commands.NAME])")
        checks: list[Check] = []
        for name, c in commands.items():
            argv = c.str_list("argv")
            if not argv or not argv[0]:
                raise c.error("argv", "give the command as a non-empty list, e.g. [\"/usr/lib/check_raid\", \"-w\"]")
            if shutil.which(argv[0]) is None:
                where = "is not an executable file" if "/" in argv[0] else "is not found on PATH"
                raise c.error("argv", f"{argv[0]} {where}")
            fault_type = c.str("fault_type", f"compute.host.exec.{name}")
            try:
                check_pattern(fault_type)
            except ValueError as exc:
                raise c.error("fault_type", str(exc)) from None
            if "*" in fault_type or "?" in fault_type:
                raise c.error("fault_type", "a fault type, not a pattern: no wildcards")
            severities = []
            for key, default_name in (("warning_severity", "warning"), ("critical_severity", "critical")):
                try:
                    severities.append(severity_from_name(c.str(key, default_name)))
                except ValueError as exc:
                    raise c.error(key, str(exc)) from None
            warning, critical = severities
            cwd = c.path("cwd", Path("/"))
            checks.append(CommandCheck(name, Schedule.read(c, default), argv, fault_type, warning, critical,
                                       str(cwd)))
            c.done()
        cfg.done()
        return cls(checks)

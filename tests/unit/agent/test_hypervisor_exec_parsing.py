"""Pure parts of hypervisor and exec: process matching, Nagios output and exit status mapping."""

from __future__ import annotations

import pytest

from agent.checkers.base import Status
from agent.checkers.exec import CommandCheck, first_line
from agent.checkers.hypervisor import proc_matches
from agent.checkers.polling import Schedule
from doctor_common.api import common_pb2


@pytest.mark.parametrize("name, cmdline, expected", [
    ("libvirtd", ["/usr/sbin/libvirtd", "--timeout", "120"], True),          # by name
    ("python3", ["libvirtd"], True),                                         # exec -a
    ("nova-compute", ["/usr/bin/python3", "/usr/bin/nova-compute"], True),   # script: comm is its name
    ("python3", ["/usr/bin/python3", "-u", "/usr/bin/nova-compute", "--config-file", "x"], True),
    ("less", ["less", "/var/log/nova-compute"], False),                     # not an interpreter
    ("libvirtd-helper", ["/usr/sbin/libvirtd-helper"], False),               # no prefix match
    ("python3", None, False),                                                # no access to cmdline
])
def test_processes_match_by_name_argv0_or_script(name: str, cmdline: list[str] | None, expected: bool) -> None:
    """A process matches by its name, argv[0] or the script an interpreter runs; nothing else."""
    assert proc_matches(("libvirtd", "nova-compute"), name, cmdline) is expected


def test_patterns_are_shell_style() -> None:
    """qemu's binary names vary by architecture: a glob covers them."""
    assert proc_matches(("qemu-system-*",), "qemu-system-x86", ["/usr/bin/qemu-system-x86_64", "-name", "vm"])


def test_first_line_drops_performance_data() -> None:
    """Nagios plugins put perfdata after '|': the description is the status text only."""
    assert first_line(b"\n DISK WARNING - 85% used | used=85;80;90\nmore\n") == "DISK WARNING - 85% used"
    assert first_line(b"") == ""


@pytest.mark.parametrize("code, status, severity", [
    (0, Status.OK, common_pb2.SEVERITY_CLEARED),
    (1, Status.WARNING, common_pb2.SEVERITY_WARNING),
    (2, Status.FAULT, common_pb2.SEVERITY_MAJOR),
    (3, Status.UNKNOWN, common_pb2.SEVERITY_INDETERMINATE),
    (127, Status.UNKNOWN, common_pb2.SEVERITY_INDETERMINATE),
])
def test_exit_status_follows_the_nagios_convention(code: int, status: Status, severity: int) -> None:
    """0 OK, 1 WARNING, 2 CRITICAL (at the configured severity), 3 and the rest UNKNOWN."""
    check = CommandCheck("raid", Schedule(), ["/bin/true"], "compute.host.storage.raid",
                         common_pb2.SEVERITY_WARNING, common_pb2.SEVERITY_MAJOR)
    r = check.result(code, "RAID text")
    assert (r.component, r.status, r.severity) == ("exec:raid", status, severity)
    assert r.fault_type == ("" if code == 0 else "compute.host.storage.raid")
    assert r.description == "RAID text" and r.details["exit_status"] == str(code)

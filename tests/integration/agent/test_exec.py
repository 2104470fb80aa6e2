"""The exec checker running real scripts from a temp dir: Nagios statuses, timeouts that kill, debounce."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.checkers.base import Status
from agent.checkers.exec import ExecChecker
from doctor_common.api import common_pb2
from doctor_common.config import ConfigError, Section

from .conftest import Levels, gone


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def checker(section: Callable[..., Section], commands: dict[str, dict[str, Any]], **data: Any) -> ExecChecker:
    return ExecChecker.from_config(section("exec", interval_s=0.02, timeout_s=5.0, commands=commands, **data), "h1")


async def test_exit_status_and_first_line(tmp_path: Path, section: Callable[..., Section],
                                          levels: Callable[[Any], Levels]) -> None:
    """0/1/2/3 become OK/WARNING/FAULT/UNKNOWN; the first output line, perfdata dropped, is the description."""
    cmds = {
        "ok": {"argv": [str(script(tmp_path, "ok", 'echo "OK - fine"\n'))]},
        "disk": {"argv": [str(script(tmp_path, "disk", 'echo "DISK WARNING - 85% | used=85"\necho more\nexit 1\n'))]},
        "raid": {"argv": [str(script(tmp_path, "raid", 'echo "RAID CRITICAL - $1 degraded"\nexit 2\n')), "md0"],
                 "fault_type": "compute.host.storage.raid", "critical_severity": "major"},
        "odd": {"argv": [str(script(tmp_path, "odd", 'echo "cannot tell" >&2\nexit 3\n'))]},
    }
    async with levels(checker(section, cmds)) as lv:
        now = await lv.until(lambda n: len(n) == 4)
    assert now["exec:ok"].status == Status.OK and now["exec:ok"].description == "OK - fine"
    disk = now["exec:disk"]
    assert (disk.status, disk.fault_type, disk.description) == (Status.WARNING, "compute.host.exec.disk",
                                                                 "DISK WARNING - 85%")
    raid = now["exec:raid"]
    assert (raid.status, raid.fault_type, raid.severity) == (Status.FAULT, "compute.host.storage.raid",
                                                             common_pb2.SEVERITY_MAJOR)
    assert raid.description == "RAID CRITICAL - md0 degraded"  # argv reached the script, no shell
    odd = now["exec:odd"]
    assert (odd.status, odd.description) == (Status.UNKNOWN, "cannot tell")  # stderr when stdout is empty


async def test_a_command_past_its_timeout_is_killed_with_its_children(
        tmp_path: Path, section: Callable[..., Section], levels: Callable[[Any], Levels]) -> None:
    """The run ends at the timeout as UNKNOWN, and the script and the child it spawned are both gone."""
    pids = tmp_path / "pids"
    hang = script(tmp_path, "hang", f'echo $$ > {pids}\nsleep 30 &\necho $! >> {pids}\nwait\n')
    c = checker(section, {"hang": {"argv": [str(hang)], "timeout_s": 0.3, "interval_s": 60}})
    async with levels(c) as lv:
        now = await lv.until(lambda n: "exec:hang" in n)
    r = now["exec:hang"]
    assert (r.status, r.severity) == (Status.UNKNOWN, common_pb2.SEVERITY_INDETERMINATE)
    assert "timed out after 0.3s" in r.description
    assert c.stats["hang"].last is not None and c.stats["hang"].last.outcome == "timeout"
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2
    async with asyncio.timeout(5):  # SIGKILL is sent; the child's exit may take a moment
        while not all(gone(p) for p in started):
            await asyncio.sleep(0.01)


async def test_a_vanished_command_is_unknown(tmp_path: Path, section: Callable[..., Section],
                                             levels: Callable[[Any], Levels]) -> None:
    """A script removed after start-up cannot run: UNKNOWN saying why, not a crashed checker."""
    path = script(tmp_path, "gone", "exit 0\n")
    c = checker(section, {"gone": {"argv": [str(path)]}})
    path.unlink()
    async with levels(c) as lv:
        now = await lv.until(lambda n: "exec:gone" in n)
    assert now["exec:gone"].status == Status.UNKNOWN and "cannot run" in now["exec:gone"].description


async def test_flapping_script_is_debounced(tmp_path: Path, section: Callable[..., Section],
                                            levels: Callable[[Any], Levels]) -> None:
    """2-of-3: exit codes 0,2,0,2,2 report CRITICAL only at the fourth run, when two of the last three agree."""
    seq = tmp_path / "seq"
    seq.write_text("0 2 0 2 2 2 2 2 2 2 2 2\n")
    flap = script(tmp_path, "flap", f'set -- $(cat {seq})\ncode=$1\nshift\necho "$@" > {seq}\n'
                                    'echo "run says $code"\nexit $code\n')
    c = checker(section, {"flap": {"argv": [str(flap)], "debounce_n": 2, "debounce_m": 3}})
    async with levels(c) as lv:
        await lv.until(lambda n: "exec:flap" in n and n["exec:flap"].status == Status.FAULT)
    assert [r.status for r in lv.history] == [Status.OK, Status.FAULT]
    outcomes = [r.outcome for r in c.stats["flap"].recent]
    assert outcomes[:4] == ["ok", "fault", "ok", "fault"]


@pytest.mark.parametrize("cmd, key, words", [
    ({"argv": []}, "checkers.exec.commands.x.argv", "non-empty"),
    ({"argv": ["/nonexistent/check"]}, "checkers.exec.commands.x.argv", "not an executable"),
    ({"argv": ["no-such-command-anywhere"]}, "checkers.exec.commands.x.argv", "not found on PATH"),
    ({"argv": ["true"], "critical_severity": "dire"}, "checkers.exec.commands.x.critical_severity", "unknown"),
    ({"argv": ["true"], "fault_type": "compute.*"}, "checkers.exec.commands.x.fault_type", "no wildcards"),
    ({"argv": ["true"], "intervall_s": 5}, "checkers.exec.commands.x.intervall_s", "unknown key"),
])
def test_bad_command_config_names_the_key(section: Callable[..., Section], cmd: dict[str, Any], key: str,
                                          words: str) -> None:
    """Mistakes in a command's table fail at start naming the dotted key."""
    with pytest.raises(ConfigError) as err:
        checker(section, {"x": cmd})
    assert err.value.key == key and words in str(err.value)

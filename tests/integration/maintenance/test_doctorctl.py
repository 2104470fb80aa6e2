"""doctorctl for maintenance: an administrator's live progress and exit codes, owners replying at the command
line, status, a NACK, a mistake in a reply."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.ctl_shell import ROLLED_BACK, USAGE
from doctor_common.lab.cloud import Lab

S = mpb.SessionState


def ctl(lab: Lab, tmp_path: Path, who: str, *args: str) -> "asyncio.Future[subprocess.CompletedProcess[str]]":
    token = tmp_path / f"{who}.token"
    token.write_text(lab.tokens[who])
    token.chmod(0o600)
    return asyncio.ensure_future(asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "doctor_common.ctl", "--endpoint", lab.endpoint, "--token-file",
                         str(token), *args], capture_output=True, text=True, timeout=60))


async def test_a_session_at_the_command_line(site: Any, tmp_path: Path) -> None:
    lab = await site(hosts=3, servers_per_host=2)
    a, b = await site.owner(lab, "project-a"), await site.owner(lab, "project-b")
    start = ctl(lab, tmp_path, "admin", "maintenance", "start", "compute-1", "--reason", "BIOS", "--meta",
                "work=bios")
    first = await a.notice_any(S.SESSION_STATE_OWNERS_NOTIFIED)
    sid = first.session_id
    wrong = await ctl(lab, tmp_path, "project-a", "reply", sid, "--server", "vm-1-1=teleport")
    assert wrong.returncode == USAGE and "argument --server" in wrong.stderr and "INSTRUCTION one of" in wrong.stderr
    assert (await ctl(lab, tmp_path, "project-a", "reply", sid, "--server", "vm-1-1=live-migrate")).returncode == 0
    await b.notice(sid, S.SESSION_STATE_OWNERS_NOTIFIED)
    replied = await ctl(lab, tmp_path, "project-b", "reply", sid, "--server", "vm-1-2=migrate:compute-3")
    assert replied.returncode == 0, replied.stderr
    out = await start
    assert out.returncode == 0, out.stderr
    assert "owners_notified" in out.stdout and out.stdout.strip().splitlines()[-1].split()[3] == "in_maintenance"

    status = await ctl(lab, tmp_path, "admin", "maintenance", "status", "compute-1")
    assert status.returncode == 0 and sid in status.stdout and "maintenance" in status.stdout
    refused = await ctl(lab, tmp_path, "admin", "maintenance", "end", "compute-1")
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr and "end with force" in refused.stderr
    ended = await ctl(lab, tmp_path, "admin", "maintenance", "end", "compute-1", "--force")
    assert ended.returncode == 0 and "completed" in ended.stdout


async def test_a_nack_exits_3_and_says_why(site: Any, tmp_path: Path) -> None:
    """A NACK rolls the session back: `maintenance start` exits ROLLED_BACK (3, apart from bad usage's 2) and says
    who refused and where each server stayed."""
    lab = await site(hosts=2, servers_per_host=1)
    a = await site.owner(lab, "project-a")
    start = ctl(lab, tmp_path, "admin", "maintenance", "start", "compute-1")
    sid = (await a.notice_any(S.SESSION_STATE_OWNERS_NOTIFIED)).session_id
    assert (await ctl(lab, tmp_path, "project-a", "reply", sid, "--nack", "--reason", "busy")).returncode == 0
    out = await start
    assert out.returncode == ROLLED_BACK == 3 and "rolled_back" in out.stderr and "NACK from project-a (busy)" in out.stderr

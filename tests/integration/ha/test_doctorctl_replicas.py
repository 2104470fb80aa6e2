"""doctorctl with two replicas in etcd: every command reaches the leader from a dead endpoint and a follower,
and a takeover under way is waited for, within the deadline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from doctor_common.ctl_shell import REFUSED
from doctor_common.lab.cloud import free_port
from doctor_common.lab.replicated import HaLab
from tests.etcd_cluster import EtcdCluster


def ctl(lab: HaLab, tmp_path: Path, who: str, *args: str, endpoints: str | None = None
        ) -> "asyncio.Future[subprocess.CompletedProcess[str]]":
    token = tmp_path / f"{who}.token"
    token.write_text(lab.tokens[who])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTOR_")}
    if endpoints is not None:  # given the way an operator's shell profile would
        env["DOCTOR_ENDPOINTS"] = endpoints
    return asyncio.ensure_future(asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "doctor_common.ctl", "--token-file", str(token), *args],
        capture_output=True, text=True, timeout=90, env=env))


async def test_every_command_finds_the_leader_past_a_dead_endpoint_and_a_follower(
        ha: Any, shared_etcd: EtcdCluster, tmp_path: Path) -> None:
    """doctorctl knows only a dead address and the follower (not the leader): each command passes over the dead
    one, is sent on by the follower's hint and is answered by the leader — a query, enable-host (the leader's
    refusal without --force, its success with it), maintenance status/watch (a stream), a consumer's reply, the
    status report (the leader's; with --here the follower's own), profile. Nothing on stderr but the leader's
    refusals."""
    lab = await ha(shared_etcd, replicas=2, hosts=2, netns=False, agents=False)
    assert await lab.wait_leader() == 0  # waited on: a status call can take more than its 1 s under load
    leader, follower = lab.replicas[0].endpoint, lab.replicas[1].endpoint
    dead = f"127.0.0.1:{free_port()}"
    eps = ["--endpoint", dead, "--endpoint", follower]

    out = await ctl(lab, tmp_path, "admin", *eps, "hosts")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == ["compute-1", "compute-2"]

    out = await ctl(lab, tmp_path, "admin", "enable-host", "compute-1", endpoints=f"{dead},{follower}")
    assert out.returncode == REFUSED and out.stderr.startswith("doctorctl: FAILED_PRECONDITION: host compute-1 is "
                                                               "not ready to serve again: its agent is not connected")
    out = await ctl(lab, tmp_path, "admin", "enable-host", "compute-1", "--force", endpoints=f"{dead},{follower}")
    assert out.returncode == 0 and out.stdout.strip() == "compute-1: UP", (out.stdout, out.stderr)

    out = await ctl(lab, tmp_path, "admin", *eps, "maintenance", "status")
    assert out.returncode == 0 and "compute-2" in out.stdout and "normal" in out.stdout, out.stderr
    out = await ctl(lab, tmp_path, "admin", *eps, "maintenance", "watch", "no-such-session")
    assert out.returncode == REFUSED and out.stderr.startswith("doctorctl: NOT_FOUND: no maintenance session"), \
        out.stderr  # the leader's answer: the follower's would be UNAVAILABLE
    out = await ctl(lab, tmp_path, "project-a", *eps, "reply", "no-such-session", "--nack")
    assert out.returncode == REFUSED and out.stderr.startswith("doctorctl: NOT_FOUND:"), out.stderr

    out = await ctl(lab, tmp_path, "admin", *eps, "status")
    assert out.returncode == 0 and out.stdout.startswith("node replica-0  role leader  leader " + leader), out.stdout
    out = await ctl(lab, tmp_path, "admin", *eps, "status", "--here")
    assert out.returncode == 0 and out.stdout.startswith("node replica-1  role follower  leader " + leader)
    out = await ctl(lab, tmp_path, "admin", *eps, "profile")
    assert out.returncode == 0 and out.stdout.strip() == "no fault timelines yet", out.stderr


async def test_a_takeover_under_way_is_waited_for(ha: Any, shared_etcd: EtcdCluster, tmp_path: Path) -> None:
    """The leader is SIGKILLed just before doctorctl runs with both addresses, the dead leader first: its lease
    still names it for up to a TTL, so the follower keeps sending doctorctl there; doctorctl keeps going round
    until the follower has taken over, and is answered by it."""
    lab = await ha(shared_etcd, replicas=2, hosts=1, netns=False, agents=False)
    await lab.kill_replica(0)
    out = await ctl(lab, tmp_path, "admin", "--timeout", "30", "status",
                    endpoints=",".join(lab.endpoints))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"node replica-1  role leader  leader {lab.replicas[1].endpoint}"), out.stdout
    out = await ctl(lab, tmp_path, "admin", "hosts", endpoints=",".join(lab.endpoints))
    assert out.returncode == 0 and "compute-1" in out.stdout, out.stderr

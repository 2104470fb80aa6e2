"""doctorctl as a shell meets it, against a live inspector: how it ends (exit status, at most one line on stderr,
never a traceback) when its reader goes away, on Ctrl-C, with a token file it cannot read, a bad value, no
inspector to reach, a hung endpoint before a good one, and an inspector that refuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.client import DoctorClient
from doctor_common.ctl_shell import BROKEN_PIPE, INTERRUPTED, REFUSED, UNREACHABLE, USAGE
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, free_port

CTL = [sys.executable, "-m", "doctor_common.ctl"]


def token_file(lab: Lab, tmp_path: Path, who: str = "admin") -> str:
    path = tmp_path / f"{who}.token"
    path.write_text(lab.tokens[who])
    path.chmod(0o600)
    return str(path)


def ctl(*args: str, stdout: int | None = subprocess.PIPE, timeout: float = 60
        ) -> "asyncio.Future[subprocess.CompletedProcess[str]]":
    return asyncio.ensure_future(asyncio.to_thread(
        subprocess.run, [*CTL, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCTOR_")}))


def one_line(stderr: str) -> str:
    """The single line doctorctl wrote on stderr (fails on none, several, or a traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    return lines[0]


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader is already gone (what `| head -1` leaves behind)."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


@pytest.mark.parametrize("command", [["hosts"], ["faults", "--json"], ["subscribe"], ["status"]])
async def test_a_reader_that_went_away_ends_doctorctl_quietly(
        lab: Lab, tmp_path: Path, closed_pipe: int, command: list[str]) -> None:
    """Writing to a pipe nobody reads ends doctorctl with 141 (as a tool killed by SIGPIPE) and nothing on stderr:
    no BrokenPipeError traceback, no "Exception ignored" at the interpreter's exit."""
    out = await ctl("--endpoint", lab.endpoint, "--token-file", token_file(lab, tmp_path), *command,
                    stdout=closed_pipe)
    assert (out.returncode, out.stderr) == (BROKEN_PIPE, "")


async def test_subscribe_piped_into_head_ends_with_the_next_notification(lab: Lab, tmp_path: Path) -> None:
    """`doctorctl subscribe | head -1` in bash: head takes the snapshot line and exits; the next notification
    (a sensor warning, as a monitor reports it) ends doctorctl with 141, quietly; head's line is the snapshot."""
    tok = token_file(lab, tmp_path)
    script = (f"set -o pipefail; {' '.join(CTL)} --endpoint {lab.endpoint} --token-file {tok} subscribe 2>{tmp_path}/err"
              " | head -1")
    # a session of its own: whatever happens, the whole pipeline is killed at the end (no doctorctl left behind)
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = json.loads(await proc.stdout.readline())
        assert "subscribed" in first
        md = auth_metadata(lab.hosts["compute-1"].agent_token)
        async with DoctorClient(lab.endpoint) as c:
            gateway = agent_pb2_grpc.AgentGatewayStub(c._channel)
            for k in range(200):  # bounded: until doctorctl has written into the closed pipe
                status = "down" if k % 2 == 0 else "up"
                event = {"event": {"time": "2026-01-01T00:00:00Z", "type": "compute.host.sensor.warning",
                                   "details": {"hostname": "compute-1", "severity": "warning", "monitor_id": "m",
                                               "status": status}}}
                await gateway.ReportJson(agent_pb2.JsonEventReport(json=json.dumps(event)), metadata=md, timeout=5)
                try:
                    async with asyncio.timeout(0.1):
                        await proc.wait()
                    break
                except TimeoutError:
                    continue
        assert await proc.wait() == BROKEN_PIPE  # pipefail: the pipeline's status is doctorctl's
        assert (tmp_path / "err").read_text() == ""
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_ctrl_c_exits_130_quietly(lab: Lab, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while a subscription streams: exit 130, nothing on stderr."""
    proc = await asyncio.create_subprocess_exec(
        *CTL, "--endpoint", lab.endpoint, "--token-file", token_file(lab, tmp_path), "subscribe",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert "subscribed" in json.loads(await proc.stdout.readline())
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == INTERRUPTED
            assert await proc.stderr.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("make", ["missing", "directory", "empty"])
async def test_a_token_file_that_cannot_be_used_is_named(lab: Lab, tmp_path: Path, make: str) -> None:
    """A token file that does not exist, is a directory or is empty: exit 2, one line naming the file and why."""
    path = tmp_path / "admin.token"
    if make == "directory":
        path.mkdir()
    elif make == "empty":
        path.write_text("\n")
    out = await ctl("--endpoint", lab.endpoint, "--token-file", str(path), "hosts")
    line = one_line(out.stderr)
    assert out.returncode == USAGE and f"--token-file {path}" in line, line
    assert {"missing": "No such file", "directory": "Is a directory", "empty": "empty"}[make] in line


@pytest.mark.parametrize("args, flag", [
    (["subscribe", "--count", "many"], "--count"),
    (["profile", "--last", "0"], "--last"),
    (["faults", "--min-severity", "huge"], "--min-severity"),
    (["--timeout", "-1", "hosts"], "--timeout"),
    (["--endpoint", "inspector-1", "hosts"], "--endpoint"),
    (["--endpoint", "127.0.0.1:1,,127.0.0.1:2", "hosts"], "--endpoint"),
    (["maintenance", "start", "compute-1", "--meta", "novalue"], "--meta"),
    (["maintenance", "start", "compute-1", "--reply-timeout", "soon"], "--reply-timeout"),
])
async def test_a_bad_value_names_its_flag_on_one_line(args: list[str], flag: str) -> None:
    """A bad value: exit 2 and argparse's message, naming the flag, on one line (no usage block, no traceback)."""
    out = await ctl(*args)
    line = one_line(out.stderr)
    assert out.returncode == USAGE and f"argument {flag}:" in line and "error:" in line, line


async def test_a_bad_endpoint_in_the_environment_is_named() -> None:
    """$DOCTOR_ENDPOINTS is checked as --endpoint is; the error names the variable."""
    out = await asyncio.to_thread(subprocess.run, [*CTL, "hosts"], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "DOCTOR_ENDPOINTS": "127.0.0.1:1,nowhere"})
    line = one_line(out.stderr)
    assert out.returncode == USAGE and "$DOCTOR_ENDPOINTS" in line and "'nowhere'" in line, line


async def test_no_inspector_to_reach_lists_each_endpoint_and_why(tmp_path: Path) -> None:
    """Nothing listens at any endpoint: exit 4 at once (not after --timeout), one line naming every endpoint with
    its reason."""
    port, sock = free_port(), tmp_path / "inspector.sock"
    t = time.monotonic()
    out = await ctl("--endpoint", f"127.0.0.1:{port}", "--endpoint", f"unix:{sock}", "--timeout", "60", "hosts")
    took = time.monotonic() - t
    line = one_line(out.stderr)
    assert out.returncode == UNREACHABLE, line
    assert f"127.0.0.1:{port}: connection refused" in line and f"unix:{sock}: no such file or directory" in line
    assert took < 30, f"it waited for the deadline ({took:.1f} s) although nobody was there"


async def test_a_hung_endpoint_is_passed_over_for_the_next(lab: Lab, tmp_path: Path) -> None:
    """The first endpoint accepts TCP connections but never speaks (a hung process): doctorctl gives up on it
    after its connect timeout and is served by the next one."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        hung_ep = f"127.0.0.1:{hung.getsockname()[1]}"
        out = await ctl("--endpoint", f"{hung_ep},{lab.endpoint}", "--token-file", token_file(lab, tmp_path), "hosts")
        assert out.returncode == 0, out.stderr
        assert "compute-1" in out.stdout and out.stderr == ""
        out = await ctl("--endpoint", hung_ep, "--timeout", "3", "--token-file", token_file(lab, tmp_path), "hosts")
    line = one_line(out.stderr)
    # our connect timeout, or gRPC's own limit on the HTTP/2 handshake, whichever comes first
    assert out.returncode == UNREACHABLE and (f"{hung_ep}: no connection within" in line or
                                              f"{hung_ep}: connection attempt timed out" in line), line


async def test_a_refusal_is_its_status_and_message_on_one_line(lab: Lab, tmp_path: Path) -> None:
    """The inspector refuses: exit 1, `doctorctl: STATUS: message` on one line (a wrong token, an unknown host)."""
    bad = tmp_path / "bad.token"
    bad.write_text("nope")
    out = await ctl("--endpoint", lab.endpoint, "--token-file", str(bad), "hosts")
    assert out.returncode == REFUSED and one_line(out.stderr).startswith("doctorctl: UNAUTHENTICATED: ")
    out = await ctl("--endpoint", lab.endpoint, "--token-file", token_file(lab, tmp_path), "enable-host", "compute-9")
    line = one_line(out.stderr)
    assert out.returncode == REFUSED and line.startswith("doctorctl: NOT_FOUND: ") and "compute-9" in line

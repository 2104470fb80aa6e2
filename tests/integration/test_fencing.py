"""IpmiFencer against real virtual BMC processes on loopback (RMCP+ through pyghmi's client and server).

pyghmi keeps its sessions in process-wide tables; these tests check that a failure, an unreachable BMC or a
shutdown in the middle of a login leaves nothing there that would make a host unfenceable later.
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller_adapter.base import Bmc
from doctor_common.ipmi_session import SessionsClosed, lan_sessions
from doctor_common.lab.cloud import fresh_bmc_port, wait_for
from doctor_common.lab.vbmc import read_state, start_vbmc
from inspector.response.fencing import IpmiFencer
from tests.conftest import pyghmi_sessions


class Bmcs:
    """Starts virtual BMCs (one process each) and stops them all at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.password = uuid.uuid4().hex
        (tmp / "bmc.pw").write_text(self.password + "\n")
        self.procs: list[subprocess.Popen[bytes]] = []

    def bmc(self, port: int | None = None) -> Bmc:
        """A BMC's address; nothing answers there until ``start`` is called for its port."""
        return Bmc("127.0.0.1", port or fresh_bmc_port(), "admin", self.password)

    def start(self, bmc: Bmc) -> subprocess.Popen[bytes]:
        proc = start_vbmc(bmc.port, self.tmp / "bmc.pw", state_file=self.state_file(bmc))
        self.procs.append(proc)
        return proc

    def state_file(self, bmc: Bmc) -> Path:
        return self.tmp / f"{bmc.port}.power"

    def power(self, bmc: Bmc) -> tuple[str, int]:
        return read_state(self.state_file(bmc))

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)  # a test may have left it stopped
            proc.kill()
            proc.wait(5)


@pytest.fixture
def bmcs(tmp_path: Path) -> Iterator[Bmcs]:
    b = Bmcs(tmp_path)
    yield b
    b.stop_all()


@pytest.fixture
async def fencer() -> AsyncIterator[IpmiFencer]:
    f = IpmiFencer(timeout_s=3.0, retry_s=0.05)
    yield f
    await f.close()


async def test_fence_powers_off_and_confirms(bmcs: Bmcs, fencer: IpmiFencer) -> None:
    bmc = bmcs.bmc()
    bmcs.start(bmc)
    result = await fencer.fence("h1", bmc)
    assert result.ok and not result.already_off, result.error
    assert bmcs.power(bmc) == ("off", 1)
    again = await fencer.fence("h1", bmc)
    assert again.ok and again.already_off
    assert bmcs.power(bmc) == ("off", 1), "an already-off host gets no second power-off"


async def test_a_failed_call_does_not_leave_the_host_unfenceable(bmcs: Bmcs, fencer: IpmiFencer) -> None:
    """Any failure on a session drops it; the next call logs in afresh and works (pyghmi once handed the
    dead session to every later login to that BMC, for the life of the process)."""
    bmc = bmcs.bmc()
    bmcs.start(bmc)
    assert await fencer.power_state(bmc) == "on"

    def fails(cmd: Any) -> None:
        raise RuntimeError("the BMC answered with an error")
    with pytest.raises(RuntimeError):
        await fencer._call(bmc, fails, 3.0)
    assert pyghmi_sessions(bmc.port) == [], "the failed session is gone from pyghmi's tables"

    result = await fencer.fence("h1", bmc)
    assert result.ok, result.error
    assert bmcs.power(bmc) == ("off", 1)


async def test_a_bmc_unreachable_at_first_is_fenceable_once_it_answers(bmcs: Bmcs) -> None:
    """The first login fails (nothing listens yet); once the BMC is up, fencing logs in and powers off."""
    fencer = IpmiFencer(timeout_s=0.5)
    try:
        bmc = bmcs.bmc()
        await fencer.warm(bmc)  # gives up after 0.5 s; pyghmi's login goes on in its thread until it fails
        await wait_for(lambda: pyghmi_sessions(bmc.port), 10, 0.01, "the first login to be under way")
        await wait_for(lambda: not pyghmi_sessions(bmc.port), 20, 0.05, "pyghmi to give up the first login")

        bmcs.start(bmc)
        fencer.timeout_s = 3.0
        result = await fencer.fence("h1", bmc)
        assert result.ok, result.error
        assert bmcs.power(bmc) == ("off", 1)
    finally:
        await fencer.close()


async def test_shutting_down_during_a_login_leaves_no_session(bmcs: Bmcs) -> None:
    """A call still logging in when the fencer closes (a warm-up at shutdown) must not leave a live session
    behind: pyghmi would keep sending it keepalives, from whichever thread waits next, for the life of the
    process. The login that completes after close() is logged out and the call fails saying why."""
    fencer = IpmiFencer(timeout_s=3.0)
    bmc = bmcs.bmc()
    proc = bmcs.start(bmc)
    proc.send_signal(signal.SIGSTOP)  # the login waits for a BMC that does not answer yet
    try:
        call = asyncio.create_task(fencer.power_state(bmc, timeout=20))
        await wait_for(lambda: pyghmi_sessions(bmc.port), 10, 0.01, "the login to start")
        await fencer.close()
    finally:
        proc.send_signal(signal.SIGCONT)  # now the login completes, after close()
    with pytest.raises(SessionsClosed, match="shut down"):
        await call
    await wait_for(lambda: not pyghmi_sessions(bmc.port), 20, 0.05, "pyghmi to forget the session")


def test_concurrent_logins_and_retries_do_not_deadlock(bmcs: Bmcs) -> None:
    """Threads logging in to several BMCs at once and retransmitting every 0.5 ms: pyghmi's two table locks,
    taken in both orders, deadlocked every one of them (and all IPMI in the process) within a second, every
    time, until lan_sessions() made them one. In its own process: a deadlock there must not hang the rest."""
    hosts = [bmcs.bmc() for _ in range(4)]
    for bmc in hosts:
        bmcs.start(bmc)
    try:
        done = subprocess.run([sys.executable, "-m", "tests.integration.ipmi_stress", "--seconds", "2",
                               "--password-file", str(bmcs.tmp / "bmc.pw"), *(str(b.port) for b in hosts)],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"IPMI threads deadlocked: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["stuck"] == [], f"IPMI threads deadlocked: {report}"
    assert all(n > 0 for n in report["answers"]), report


def test_the_io_thread_survives_a_session_removed_while_routing() -> None:
    """pyghmi checks bmc_handlers, then indexes it, without a lock: a session removed in between raised in its
    I/O thread, which died and left every later IPMI wait of the process blocked. lan_sessions() guards it."""
    session = lan_sessions()

    class Vanishing(dict):  # type: ignore[type-arg]
        """A BMC's handlers whose session goes away between pyghmi's check and its lookup."""
        def __contains__(self, key: object) -> bool:
            return True

        def __getitem__(self, key: object) -> Any:
            raise KeyError(key)

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as ours, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as bmc:
        ours.bind(("::1", 0))
        bmc.bind(("::1", 0))
        bmc.sendto(b"\x06\x00\xff\x07 a reply", ours.getsockname())
        addr = bmc.getsockname()
        session.Session.bmc_handlers[addr] = Vanishing()
        try:
            ours.settimeout(5)
            select.select([ours], [], [], 5)
            assert session._io_graball([ours], {}) == []
        finally:
            session.Session.bmc_handlers.pop(addr, None)

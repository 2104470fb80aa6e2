"""IpmiFencer against real virtual BMC processes on loopback (RMCP+ through pyghmi's client and server).

pyghmi keeps its sessions in process-wide tables; these tests check that a failure, an unreachable BMC or a
shutdown in the middle of a login leaves nothing there that would make a host unfenceable later.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller_adapter.base import Bmc
from doctor_common.ipmi_session import credentials, discard, lan_sessions
from doctor_common.lab import fresh_bmc_port, wait_for
from doctor_common.vbmc import read_state, start_vbmc
from inspector.fencing import IpmiFencer
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
    """A warm-up still logging in when the fencer closes must not leave a live session behind (pyghmi would
    keep sending it keepalives, from whichever thread waits next, for the life of the process)."""
    fencer = IpmiFencer(timeout_s=3.0)
    bmc = bmcs.bmc()
    proc = bmcs.start(bmc)
    proc.send_signal(signal.SIGSTOP)  # the login waits for a BMC that does not answer yet
    warming = asyncio.create_task(fencer.warm(bmc))
    await wait_for(lambda: pyghmi_sessions(bmc.port), 10, 0.01, "the login to start")
    warming.cancel()
    await fencer.close()
    proc.send_signal(signal.SIGCONT)  # now the login completes, after close()
    await asyncio.gather(warming, return_exceptions=True)
    await wait_for(lambda: not pyghmi_sessions(bmc.port), 20, 0.05, "pyghmi to forget the session")


def test_concurrent_logins_and_retries_do_not_deadlock(bmcs: Bmcs) -> None:
    """Threads logging in to several BMCs at once and retransmitting every 0.5 ms: pyghmi's two table locks,
    taken in both orders, deadlocked every one of them (and all IPMI in the process) within a second, every
    time, until lan_sessions() made them one."""
    lan_sessions()
    from pyghmi.ipmi import command

    hosts = [bmcs.bmc() for _ in range(4)]
    for bmc in hosts:
        bmcs.start(bmc)
    user, password = credentials("admin", bmcs.password)
    answers = [0] * len(hosts)
    stop = time.monotonic() + 2.0

    def work(i: int) -> None:
        for _ in range(1000):  # logins; bounded in count and in time
            if time.monotonic() > stop:
                return
            cmd = command.Command(bmc="127.0.0.1", userid=user, password=password, port=hosts[i].port)
            for _ in range(10):
                if "error" not in cmd.raw_command(netfn=0, command=1, timeout=0.0005):
                    answers[i] += 1
            discard(cmd)
    threads = [threading.Thread(target=work, args=(i,), name="ipmi-stress", daemon=True) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop + 10 - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], f"IPMI threads deadlocked (answers so far: {answers})"
    assert all(n > 0 for n in answers), answers

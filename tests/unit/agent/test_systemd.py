"""sd_notify over a real unix datagram socket, and a watchdog that pings only while every loop lives."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

import pytest

from doctor_common.systemd import Liveness, SystemdNotifier, watchdog
from tests.conftest import NotifySocket, anotify_until, arecv


async def test_notifier_speaks_the_protocol(notify: NotifySocket) -> None:
    """READY, STATUS, WATCHDOG and STOPPING arrive as newline-separated KEY=value datagrams."""
    sock, path = notify.sock, notify.path
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready("3 checkers running")
    assert await arecv(sock) == "READY=1\nSTATUS=3 checkers running"
    n.watchdog()
    assert await arecv(sock) == "WATCHDOG=1"
    n.stopping()
    assert await arecv(sock) == "STOPPING=1"
    n.close()


async def test_abstract_socket_with_at_sign() -> None:
    """NOTIFY_SOCKET=@name is the abstract namespace (systemd uses it in containers)."""
    name = f"doctor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        n = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("hello")
        assert await arecv(sock) == "STATUS=hello"
        n.close()
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent() -> None:
    """No NOTIFY_SOCKET: every call is a no-op returning False, and there is no watchdog."""
    n = SystemdNotifier({})
    assert not n.enabled and not n.ready() and n.watchdog_interval() is None


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    """systemd gone (socket path missing): the send fails quietly."""
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    n.close()


def test_watchdog_interval_and_pid() -> None:
    """WATCHDOG_USEC gives the interval, unless WATCHDOG_PID names another process."""
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() == 2.0
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 2.0
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert SystemdNotifier({"WATCHDOG_USEC": "bogus"}).watchdog_interval() is None


def test_unset_env_keeps_children_from_notifying() -> None:
    """With unset_env the variables are gone from the environment children inherit."""
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = SystemdNotifier(env, unset_env=True)
    assert n.enabled and n.watchdog_interval() == 1.0 and env == {"PATH": "/bin"}


async def test_liveness_sees_ended_tasks_and_silent_loops() -> None:
    """A loop is not alive once its task ended or it missed its deadline; close() removes it."""
    live = Liveness()
    task = asyncio.create_task(asyncio.sleep(0))
    ended = live.register("ended", None, task)  # type: ignore[arg-type]
    silent = live.register("silent", 0.01)
    await task
    await asyncio.sleep(0.02)
    assert set(live.problems()) == {"ended", "silent"} and "ended" == live.problems()["ended"]
    silent.beat()
    ended.close()
    assert live.all_alive()


async def test_watchdog_stops_pinging_when_a_loop_dies(notify: NotifySocket) -> None:
    """Pings flow while every loop lives; after one loop's task dies they stop and STATUS says which."""
    sock, path = notify.sock, notify.path
    n = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    live = Liveness()
    stop = asyncio.Event()
    worker = asyncio.create_task(stop.wait())
    live.register("worker", None, worker)  # type: ignore[arg-type]
    pinger = asyncio.create_task(watchdog(n, live))  # every 10 ms: half of WATCHDOG_USEC
    try:
        for _ in range(3):
            assert await arecv(sock) == "WATCHDOG=1"
        worker.cancel()  # the loop dies
        *pings, msg = await anotify_until(lambda: arecv(sock), "STATUS=")
        assert set(pings) <= {"WATCHDOG=1"}  # pings already on their way before it died
        assert msg.startswith("STATUS=loops not alive: worker: ended")
        with pytest.raises(asyncio.TimeoutError):  # 20 watchdog periods without a ping
            await arecv(sock, timeout=0.2)
    finally:
        pinger.cancel()
        await asyncio.gather(pinger, worker, return_exceptions=True)
        n.close()

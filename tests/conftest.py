"""Fixtures shared by every test area.

Tests that need root (network namespaces) or Debian's etcd say so with the
``needs_root`` / ``needs_etcd`` fixtures: they skip on a developer's laptop but
*fail* in CI (``CI`` set), where both are always available.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from doctor_common.lab.cloud import free_port  # noqa: F401 - the tests' one source of loopback ports


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        _unavailable("needs root for network namespaces")


def etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


@pytest.fixture
def needs_etcd() -> str:
    path = etcd_binary()
    if path is None:
        _unavailable("needs Debian's etcd-server (make setup installs it)")
    return path  # type: ignore[return-value]


NOTIFY_LIMIT = 500  # sd_notify messages read while waiting for one: bounds a loop that pings forever


def notify_until(recv: Callable[[], str], prefix: str, limit: int = NOTIFY_LIMIT) -> list[str]:
    """sd_notify messages read up to and including the first that starts with ``prefix`` (each ``recv`` has its
    own timeout); AssertionError after ``limit`` others."""
    seen = []
    for _ in range(limit):
        seen.append(recv())
        if seen[-1].startswith(prefix):
            return seen
    raise AssertionError(f"no {prefix!r} in {limit} messages; last: {seen[-3:]}")


async def anotify_until(recv: Callable[[], Awaitable[str]], prefix: str, limit: int = NOTIFY_LIMIT) -> list[str]:
    """``notify_until`` for an asynchronous ``recv``."""
    seen = []
    for _ in range(limit):
        seen.append(await recv())
        if seen[-1].startswith(prefix):
            return seen
    raise AssertionError(f"no {prefix!r} in {limit} messages; last: {seen[-3:]}")


async def arecv(sock: socket.socket, timeout: float = 5.0) -> str:
    """One datagram from a non-blocking socket, waited for on the event loop."""
    return (await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)).decode()


class NotifySocket:
    """A NOTIFY_SOCKET as systemd gives one: a datagram socket (here in the test's temp dir)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def recv(self, timeout: float = 15.0) -> str:
        """The next message, for tests without an event loop; TimeoutError after ``timeout``."""
        if not select.select([self.sock], [], [], timeout)[0]:
            raise TimeoutError(f"no sd_notify message within {timeout:g}s")
        return self.sock.recv(4096).decode()

    async def arecv(self, timeout: float = 5.0) -> str:
        return await arecv(self.sock, timeout)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify")
    yield n
    n.sock.close()


def pyghmi_sessions(port: int) -> list[str]:
    """Where pyghmi's process-wide tables still hold a session to the BMC on ``port``."""
    from pyghmi.ipmi.private.session import Session

    found = [f"bmc_handlers[{addr}]" for addr, by_port in list(Session.bmc_handlers.items())
             if isinstance(addr, tuple) and addr[1] == port and by_port]
    found += [f"{table}" for table in ("keepalive_sessions", "waiting_sessions")
              for s in list(getattr(Session, table)) if getattr(s, "port", None) == port]
    found += [f"initting_sessions[{key}]" for key in list(Session.initting_sessions) if key[3] == port]
    return found

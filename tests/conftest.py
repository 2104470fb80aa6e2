"""Fixtures shared by every test area.

Tests that need root (network namespaces) or Debian's etcd say so with the
``needs_root`` / ``needs_etcd`` fixtures: they skip on a developer's laptop but
*fail* in CI (``CI`` set), where both are always available.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Awaitable, Callable

import pytest


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


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port free right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

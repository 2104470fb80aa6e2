"""Being a proper systemd service: ``Type=notify`` and a watchdog that means something.

``SystemdNotifier`` speaks the sd_notify protocol (a datagram of
``KEY=value`` lines to the unix socket in ``NOTIFY_SOCKET``; a leading ``@``
names an abstract socket). Outside systemd every call is a cheap no-op.

``Liveness`` is a registry of the daemon's long-running loops. Each loop
registers with a deadline and beats; ``watchdog()`` pings systemd only while
every registered loop is alive: its task (if given) has not ended and it beat
within its deadline. A loop that died or hangs therefore stops the pings and
systemd restarts the daemon (``WatchdogSec=``, ``Restart=on-failure``); a
blocked event loop stops them too, since the pinging task cannot run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

log = logging.getLogger("doctor.systemd")

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class SystemdNotifier:
    """sd_notify(3) without libsystemd. ``unset_env`` keeps children (exec checks) from inheriting the socket."""

    def __init__(self, env: MutableMapping[str, str] | None = None, *, unset_env: bool = False) -> None:
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]  # abstract namespace
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", path)
        self._watchdog_s = _watchdog_seconds(environ)
        if unset_env:
            for key in _ENV_KEYS:
                environ.pop(key, None)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects WATCHDOG=1 (WatchdogSec=), or None when not watched."""
        return self._watchdog_s

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False when not under systemd or the send failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full socket queue must never stall the event loop
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", fields, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # the watchdog is meant for another process
    return usec / 1e6


@dataclass
class Loop:
    """One registered loop; ``beat()`` says it made progress."""

    name: str
    deadline_s: float | None
    task: asyncio.Task[object] | None = None
    last_beat: float = field(default_factory=time.monotonic)
    registry: "Liveness | None" = field(default=None, repr=False)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def close(self) -> None:
        """An orderly end: the loop no longer counts."""
        if self.registry is not None and self.registry.loops.get(self.name) is self:
            del self.registry.loops[self.name]

    def problem(self, now: float) -> str | None:
        if self.task is not None and self.task.done():
            return "ended"
        if self.deadline_s is not None and now - self.last_beat > self.deadline_s:
            return f"silent for {now - self.last_beat:.1f}s (deadline {self.deadline_s:g}s)"
        return None


class Liveness:
    """The daemon's loops and whether each is alive."""

    def __init__(self) -> None:
        self.loops: dict[str, Loop] = {}

    def register(self, name: str, deadline_s: float | None = None, task: asyncio.Task[object] | None = None) -> Loop:
        """A loop alive while ``task`` runs and it beats at least every ``deadline_s`` (None: no deadline)."""
        loop = Loop(name, deadline_s, task, registry=self)
        self.loops[name] = loop
        return loop

    def problems(self) -> dict[str, str]:
        now = time.monotonic()
        return {name: why for name, loop in list(self.loops.items()) if (why := loop.problem(now)) is not None}

    def all_alive(self) -> bool:
        return not self.problems()


async def watchdog(notifier: SystemdNotifier, liveness: Liveness, period_s: float | None = None) -> None:
    """Ping WATCHDOG=1 every ``period_s`` (half of WatchdogSec) while every loop is alive; runs until cancelled."""
    interval = notifier.watchdog_interval()
    period = period_s if period_s is not None else (interval / 2 if interval else 5.0)
    reported: dict[str, str] = {}
    while True:
        problems = liveness.problems()
        if not problems:
            if reported:
                log.warning("every loop is alive again")
                notifier.status("running")
                reported = {}
            if interval is not None:
                notifier.watchdog()
        elif problems.keys() != reported.keys():
            # say it once per change; systemd will restart us if the watchdog is on
            text = "; ".join(f"{n}: {why}" for n, why in sorted(problems.items()))
            log.error("not pinging the watchdog: %s", text)
            notifier.status(f"loops not alive: {text}")
            reported = problems
        await asyncio.sleep(period)

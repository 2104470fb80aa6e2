"""Make pyghmi forget a session for good.

pyghmi keeps every logged-in session in process-wide tables (keepalives,
waiting sessions, reply routing by BMC address). A session whose BMC died or
that we abandoned stays there: its keepalives and retries run inside whatever
thread next waits for a reply, and a later session to the same address can
have its replies routed to it. Fencing then stalled for seconds once enough
dead sessions had piled up in one process. Every abandoned ``Command`` goes
through ``discard`` (``Sessions`` does it for its owners); every LAN login
passes ``credentials``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("doctor.ipmi")
_patching = threading.Lock()


def lan_sessions() -> ModuleType:
    """pyghmi's RMCP+ session module, its two table locks made one and its I/O thread kept alive; call it before
    any LAN session exists.

    pyghmi 1.6 takes them in both orders: sending holds the keepalive lock and then takes the waiting one,
    a timed-out wait holds the waiting lock and then sends. Two threads talking to BMCs at once deadlocked,
    and with them every IPMI call in the process, for good (four concurrent sessions retrying every
    0.5 ms hung within a second, every time). One reentrant lock cannot be taken in two orders.
    """
    with _patching:
        from pyghmi.ipmi.private import session  # noqa: PLC0415 - brings cryptography: only LAN users pay

        session.WAITING_SESSIONS = session.KEEPALIVE_SESSIONS
        if not getattr(session._io_graball, "guarded", False):
            session._io_graball = _guarded(session._io_graball)
    return session


def _guarded(graball: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    """pyghmi's I/O thread routes replies through bmc_handlers, checked then indexed without a lock: a session
    removed in between (a logout in another thread) raises there, and the dead I/O thread would leave every
    later IPMI wait of the process blocked for good. The datagrams it had read are lost; pyghmi retransmits."""
    def guarded(sockets: Any, waiters: Any) -> list[Any]:
        try:
            return graball(sockets, waiters)
        except Exception:  # noqa: BLE001 - the I/O thread must live
            log.warning("pyghmi dropped replies while a session went away", exc_info=True)
            return []
    guarded.guarded = True  # type: ignore[attr-defined]
    return guarded


def credentials(username: str, password: str) -> tuple[bytes, bytes]:
    """The user and password to log in with, as bytes.

    pyghmi files a login under way by the credentials as given and removes it by the bytes it keeps: given
    str, the entry is never removed, and every later login to the same BMC is handed that session, dead
    (a BMC unreachable once stayed unreachable for the life of the process) or alive (it then waited forever
    for a login that had long finished).
    """
    return username.encode(), password.encode()


def discard(cmd: Any) -> None:
    """Log out of ``cmd``'s session and make pyghmi forget it (blocking: call it off the event loop)."""
    session = getattr(cmd, "ipmi_session", None)
    if session is None:
        return
    try:
        # close-session without retry first: sending it puts the session back on pyghmi's waiting list,
        # which _mark_broken() then empties (the other order left it there, retried by whoever waits next).
        # pyghmi's per-socket session count goes negative on the way; only its socket sharing reads it.
        session.logout()
    except Exception:  # noqa: BLE001 - the BMC may be gone
        pass
    try:
        session._mark_broken()  # pyghmi's own cleanup of its class-level tables
    except Exception:  # noqa: BLE001
        pass
    # initting_sessions: a login under str credentials is never removed by pyghmi (see credentials())
    for table in ("initting_sessions", "bmc_handlers"):
        entries = getattr(type(session), table, None)
        if entries is None:
            continue  # an in-band session (/dev/ipmi0) has no such tables
        for key, value in list(entries.items()):
            if value is session:
                entries.pop(key, None)
            elif isinstance(value, dict):  # bmc_handlers: BMC address -> {local port: session}
                for port, owner in list(value.items()):
                    if owner is session:
                        del value[port]
                if not value:
                    entries.pop(key, None)


class SessionsClosed(RuntimeError):
    """A call reached IPMI sessions that have been closed (the owner is shutting down)."""


class Sessions:
    """The pyghmi sessions one owner (the fencer, a BMC check) holds, by key: logged in at first use, dropped
    when a call on them fails, all logged out at close. A login that completes after close() (a call
    still waiting for its BMC at shutdown) is logged out too: left alive, pyghmi would keep sending it
    keepalives from whichever thread waits next, for the life of the process."""

    def __init__(self) -> None:
        self._by_key: dict[Any, Any] = {}
        self._lock = threading.Lock()  # call threads add sessions, close() takes them
        self._closed = False

    def call(self, key: Any, login: Callable[[], Any], fn: Callable[[Any], T]) -> T:
        """``fn`` on the session under ``key``, logging in with ``login()`` first if there is none (blocking:
        run it in a daemon thread)."""
        session = self._by_key.get(key)
        if session is None:
            if self._closed:
                raise SessionsClosed("the IPMI sessions have been closed (shut down)")
            session = login()
            with self._lock:
                closed = self._closed
                if not closed:
                    self._by_key[key] = session
            if closed:
                discard(session)
                raise SessionsClosed("the IPMI sessions have been closed (shut down)")
        try:
            return fn(session)
        except BaseException:
            with self._lock:  # a timed-out call's thread may end after a newer session took its place
                if self._by_key.get(key) is session:
                    del self._by_key[key]
            discard(session)  # not reused, nor left in pyghmi's process-wide tables
            raise

    async def close(self, timeout: float) -> None:
        """Log out of every session, concurrently, each in a daemon thread, all within ``timeout`` (a logout to
        a dead BMC waits ~1 s, and a call stuck on its session may hold it longer); the event loop runs on."""
        with self._lock:
            self._closed = True
            sessions = list(self._by_key.values())
            self._by_key.clear()
        if sessions:
            await asyncio.wait([start_in_daemon_thread(functools.partial(discard, s), "ipmi-discard")
                                for s in sessions], timeout=timeout)


def start_in_daemon_thread(fn: Callable[[], T], name: str) -> "asyncio.Future[T]":
    """Run a blocking pyghmi call in its own daemon thread; its outcome settles the returned future.

    Not a thread pool: a call stuck on a dead BMC (pyghmi gives up after ~28 s, or never when its tables are
    confused) must neither hold a pool worker nor keep the process from exiting, as a pool's threads are
    joined at interpreter exit. An outcome nobody awaits any more is retrieved, not reported as lost.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return  # the caller gave up (timeout, cancellation)
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def work() -> None:
        result, error = None, None
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the event loop is gone (stopping)

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut

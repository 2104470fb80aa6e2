"""Make pyghmi forget a session for good.

pyghmi keeps every logged-in session in process-wide tables (keepalives,
waiting sessions, reply routing by BMC address). A session whose BMC died or
that we abandoned stays there: its keepalives and retries run inside whatever
thread next waits for a reply, and a later session to the same address can
have its replies routed to it. Fencing then stalled for seconds once enough
dead sessions had piled up in one process. Every abandoned ``Command`` goes
through ``discard``; every LAN login passes ``credentials``.
"""

from __future__ import annotations

import asyncio
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

"""Fencing over IPMI: power the host off and confirm it with the BMC (DESIGN principle 2).

pyghmi is blocking and caches one session per BMC per process; calls run in
a bounded thread pool, one at a time per BMC, each bounded by a deadline (a
dead BMC would otherwise take ~28 s). ``set_power(wait=True)`` sleeps a whole
second before polling, so we send the chassis power-down ourselves and poll
the chassis status until the BMC says off. "Already off" counts as fenced.

Every IPMI request passes ``retry_s`` as pyghmi's retransmission timeout:
when a reply arrives before pyghmi's waiter is registered (a race that fast
BMCs hit in ~7 % of power commands here) the caller otherwise sleeps until
pyghmi's default 0.5-1.5 s retransmit. Chassis commands are idempotent, so
an early retransmission is harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from controller_adapter.base import Bmc
from doctor_common.ipmi_session import Sessions, credentials, lan_sessions, start_in_daemon_thread

log = logging.getLogger("doctor.inspector.fencing")
T = TypeVar("T")

_CHASSIS_NETFN, _CHASSIS_STATUS, _CHASSIS_CONTROL = 0x00, 0x01, 0x02
_POWER_DOWN, _POWER_UP = 0x00, 0x01


@dataclass(frozen=True)
class FenceResult:
    ok: bool
    already_off: bool = False
    error: str = ""
    elapsed_ms: float = 0.0


class FencingError(Exception):
    pass


class IpmiFencer:
    def __init__(self, timeout_s: float = 5.0, poll_interval_s: float = 0.002, retry_s: float = 0.05) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.poll_interval_s = poll_interval_s
        self._sessions = Sessions()
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self.power_offs_sent = 0

    @staticmethod
    def _key(bmc: Bmc) -> tuple[str, int, str]:
        return (bmc.address, bmc.port, bmc.username)

    async def _call(self, bmc: Bmc, fn: Callable[[Any], T], timeout: float) -> T:
        key = self._key(bmc)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent calls on one pyghmi session are 70-200x slower
            def login() -> Any:
                lan_sessions()  # before pyghmi's first session in this process
                from pyghmi.ipmi import command  # noqa: PLC0415 - heavy import, only where used

                user, password = credentials(bmc.username, bmc.password)
                return command.Command(bmc=bmc.address, userid=user, password=password, port=bmc.port)

            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation (the term lost) that
            # arrives as the BMC answers (gh-86296), and a deposed leader would go on to send the power-off
            async with asyncio.timeout(timeout):
                return await start_in_daemon_thread(functools.partial(self._sessions.call, key, login, fn),
                                                    "ipmi-fence")

    def _raw(self, command: int, data: tuple[int, ...] = ()) -> Callable[[Any], dict[str, Any]]:
        def call(cmd: Any) -> dict[str, Any]:
            response = cmd.raw_command(netfn=_CHASSIS_NETFN, command=command, data=data, timeout=self.retry_s)
            if isinstance(response, dict) and response.get("error"):
                raise FencingError(f"BMC answered: {response['error']}")
            return response  # type: ignore[no-any-return]
        return call

    async def power_state(self, bmc: Bmc, timeout: float | None = None) -> str:
        """'on' or 'off', from Get Chassis Status (byte 1, bit 0: power is on)."""
        response = await self._call(bmc, self._raw(_CHASSIS_STATUS), timeout or self.timeout_s)
        data = response.get("data") or [0]
        return "on" if data[0] & 0x01 else "off"

    async def warm(self, bmc: Bmc) -> None:
        """Open the session ahead of a fault, so fencing costs one round trip, not a login."""
        try:
            await self.power_state(bmc)
        except Exception as exc:  # noqa: BLE001 - warming is best effort; fencing reports for real
            log.warning("BMC %s:%d not reachable yet: %s", bmc.address, bmc.port, exc or type(exc).__name__)

    async def fence(self, host: str, bmc: Bmc | None) -> FenceResult:
        """Power the host off and confirm, both within one ``timeout_s``; never raises."""
        deadline = time.monotonic() + self.timeout_s
        sent = await self.power_off(host, bmc, deadline=deadline)
        if not sent.ok or sent.already_off:
            return sent
        confirmed = await self.confirm_off(host, bmc, deadline=deadline)
        return FenceResult(confirmed.ok, error=confirmed.error, elapsed_ms=sent.elapsed_ms + confirmed.elapsed_ms)

    async def power_off(self, host: str, bmc: Bmc | None, *, deadline: float | None = None) -> FenceResult:
        """Send the power-off unless the BMC already says off (then ``already_off``); never raises."""
        async def run(remaining: Callable[[], float]) -> FenceResult:
            assert bmc is not None
            if await self.power_state(bmc, remaining()) == "off":
                return FenceResult(True, already_off=True)
            await self._call(bmc, self._raw(_CHASSIS_CONTROL, (_POWER_DOWN,)), remaining())
            self.power_offs_sent += 1
            return FenceResult(True)
        return await self._bounded(host, bmc, "send the power-off", run, deadline)

    async def confirm_off(self, host: str, bmc: Bmc | None, *, deadline: float | None = None) -> FenceResult:
        """Poll the power state until the BMC says off; never raises."""
        async def run(remaining: Callable[[], float]) -> FenceResult:
            assert bmc is not None
            while await self.power_state(bmc, remaining()) != "off":
                await asyncio.sleep(self.poll_interval_s)
                remaining()
            return FenceResult(True)
        result = await self._bounded(host, bmc, "confirm power off", run, deadline)
        if result.ok:
            log.info("fenced %s: BMC %s:%d confirms power off", host, bmc.address, bmc.port)  # type: ignore[union-attr]
        return result

    async def _bounded(self, host: str, bmc: Bmc | None, what: str,
                       run: Callable[[Callable[[], float]], Awaitable[FenceResult]],
                       deadline: float | None = None) -> FenceResult:
        """``run`` before ``deadline`` (``time.monotonic()``; default: ``timeout_s`` from now), every failure
        turned into a FenceResult naming the BMC. One deadline serves a whole attempt: power-off and confirm."""
        started = time.monotonic()
        if bmc is None:
            return FenceResult(False, error=f"no BMC is configured for host {host}")
        end = started + self.timeout_s if deadline is None else deadline

        def remaining() -> float:
            left = end - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError()
            return left

        try:
            remaining()
            result = await run(remaining)
            return FenceResult(result.ok, result.already_off, elapsed_ms=(time.monotonic() - started) * 1e3)
        except asyncio.TimeoutError:
            error = f"BMC {bmc.address}:{bmc.port} did not {what} within the fencing timeout ({self.timeout_s:.1f}s)"
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
            error = f"BMC {bmc.address}:{bmc.port}: {type(exc).__name__}: {exc}"
        log.error("cannot fence %s: %s", host, error)
        return FenceResult(False, error=error, elapsed_ms=(time.monotonic() - started) * 1e3)

    async def power_on(self, bmc: Bmc) -> None:
        await self._call(bmc, self._raw(_CHASSIS_CONTROL, (_POWER_UP,)), self.timeout_s)

    async def close(self, timeout: float = 1.0) -> None:
        """Log out of the BMCs and make pyghmi forget the sessions (bounded: a dead BMC must not hold up
        shutdown, and must not leave keepalives running in this process)."""
        await self._sessions.close(timeout)

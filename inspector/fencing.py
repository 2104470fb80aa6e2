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
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from controller_adapter.base import Bmc

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
    def __init__(self, timeout_s: float = 5.0, poll_interval_s: float = 0.002, max_workers: int = 16,
                 retry_s: float = 0.05) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.poll_interval_s = poll_interval_s
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ipmi")
        self._commands: dict[tuple[str, int, str], Any] = {}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self.power_offs_sent = 0

    @staticmethod
    def _key(bmc: Bmc) -> tuple[str, int, str]:
        return (bmc.address, bmc.port, bmc.username)

    async def _call(self, bmc: Bmc, fn: Callable[[Any], T], timeout: float) -> T:
        key = self._key(bmc)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent calls on one pyghmi session are 70-200x slower
            loop = asyncio.get_running_loop()

            def run() -> T:
                cmd = self._commands.get(key)
                if cmd is None:
                    from pyghmi.ipmi import command  # noqa: PLC0415 - heavy import, only where used

                    cmd = command.Command(bmc=bmc.address, userid=bmc.username, password=bmc.password, port=bmc.port)
                    self._commands[key] = cmd
                try:
                    return fn(cmd)
                except Exception:
                    self._commands.pop(key, None)  # a broken session is not reused
                    raise

            return await asyncio.wait_for(loop.run_in_executor(self._pool, run), timeout)

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
        """Power the host off and confirm; never raises."""
        started = time.perf_counter()
        if bmc is None:
            return FenceResult(False, error=f"no BMC is configured for host {host}")
        deadline = started + self.timeout_s

        def remaining() -> float:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise asyncio.TimeoutError()
            return left

        try:
            state = await self.power_state(bmc, remaining())
            if state == "off":
                return FenceResult(True, already_off=True, elapsed_ms=(time.perf_counter() - started) * 1e3)
            await self._call(bmc, self._raw(_CHASSIS_CONTROL, (_POWER_DOWN,)), remaining())
            self.power_offs_sent += 1
            while True:
                if await self.power_state(bmc, remaining()) == "off":
                    break
                await asyncio.sleep(self.poll_interval_s)
                remaining()
            elapsed = (time.perf_counter() - started) * 1e3
            log.info("fenced %s: BMC %s:%d confirms power off (%.1f ms)", host, bmc.address, bmc.port, elapsed)
            return FenceResult(True, elapsed_ms=elapsed)
        except asyncio.TimeoutError:
            error = f"BMC {bmc.address}:{bmc.port} did not confirm power off within {self.timeout_s:.1f}s"
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is fatal
            error = f"BMC {bmc.address}:{bmc.port}: {type(exc).__name__}: {exc}"
        log.error("cannot fence %s: %s", host, error)
        return FenceResult(False, error=error, elapsed_ms=(time.perf_counter() - started) * 1e3)

    async def power_on(self, bmc: Bmc) -> None:
        await self._call(bmc, self._raw(_CHASSIS_CONTROL, (_POWER_UP,)), self.timeout_s)

    async def close(self, timeout: float = 1.0) -> None:
        """Log out of the BMCs (best effort, bounded: a dead BMC must not hold up shutdown)."""
        commands = list(self._commands.values())
        self._commands.clear()
        loop = asyncio.get_running_loop()

        def logout(cmd: Any) -> None:
            try:
                cmd.ipmi_session.logout()
            except Exception:  # noqa: BLE001 - the session may already be gone
                pass
        if commands:
            await asyncio.wait([loop.run_in_executor(self._pool, logout, c) for c in commands], timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

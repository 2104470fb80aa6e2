"""Hosts whose agent died or was stopped stay watched: through their BMC, and against a reconnect deadline.

Agent death is not host death (DESIGN principle 4), but the host can die
later, with nobody on it to say so. Every ``poll_s`` the BMC of each such
host is asked its power state: "off" is positive evidence, reported as
``compute.host.power.off`` (the default policy fences it: already off, so it
is marked down and its servers' owners are told). An agent that has not come
back within ``deadline_s`` is reported to administrators once
(``compute.host.agent.absent``). Both are reported again only after the
agent has returned in between.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from controller_adapter.base import Bmc
from doctor_common.api import common_pb2
from doctor_common.timeline import now_ns
from inspector.response.trigger import POWER_OFF, Trigger
from inspector.southbound.liveness import AGENT_DOWN, STOPPED, Liveness

log = logging.getLogger("doctor.inspector.absent")

AGENT_ABSENT = "compute.host.agent.absent"


class AbsentWatch:
    def __init__(self, liveness: Liveness, bmc_for: Callable[[str], Bmc | None],
                 power_state: Callable[[Bmc, float], Awaitable[str]], report: Callable[[Trigger], None],
                 poll_s: float = 2.0, deadline_s: float = 300.0, concurrency: int = 16) -> None:
        self.liveness = liveness
        self.bmc_for = bmc_for
        self.power_state = power_state
        self.report = report
        self.poll_s = poll_s
        self.deadline_s = deadline_s
        self._slots = asyncio.Semaphore(concurrency)
        self._reported: set[tuple[str, str]] = set()   # (host, fault type) reported since the agent was last up
        self.polls = 0

    async def watch(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            await self.sweep()

    async def sweep(self) -> None:
        now = time.monotonic()
        away = {h for h, rec in self.liveness.hosts.items() if rec.liveness in (AGENT_DOWN, STOPPED)}
        if self._reported:
            self._reported = {k for k in self._reported if k[0] in away}  # the agent came back: report anew
        polled: list[tuple[str, Bmc]] = []
        for host in sorted(away):
            rec = self.liveness.hosts[host]
            if now - rec.changed_at > self.deadline_s:
                self._once(rec.host_id, AGENT_ABSENT, common_pb2.SEVERITY_MAJOR, "agent",
                           f"the agent has not come back for {now - rec.changed_at:.0f} s ({rec.liveness})")
            bmc = self.bmc_for(host)
            if bmc is not None and (host, POWER_OFF) not in self._reported:
                polled.append((host, bmc))
        # a task only for a BMC to ask: thousands of agents away (a reconnect storm) cost no loop turns
        await asyncio.gather(*(self._check_power(h, bmc) for h, bmc in polled))

    async def _check_power(self, host: str, bmc: Bmc) -> None:
        async with self._slots:
            try:
                state = await self.power_state(bmc, min(5.0, self.poll_s))
            except Exception as exc:  # noqa: BLE001 - a BMC that does not answer is no evidence either way
                log.debug("BMC of %s (agent away) did not answer: %s", host, exc)
                return
            finally:
                self.polls += 1
        if state == "off":
            self._once(host, POWER_OFF, common_pb2.SEVERITY_CRITICAL, "power",
                       "the BMC reports the host powered off while its agent was away")

    def _once(self, host: str, fault_type: str, severity: int, component: str, description: str) -> None:
        if (host, fault_type) in self._reported:
            return
        self._reported.add((host, fault_type))
        log.warning("host %s: %s", host, description)
        now = now_ns()
        self.report(Trigger(host, fault_type, severity, component=component, description=description,
                            observed_ns=now, received_ns=now))

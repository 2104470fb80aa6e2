"""What ``ipmi``, ``hypervisor`` and ``exec`` share: probes on a schedule, debounced, every run recorded.

A polling checker is a set of ``Check``s, each with its own ``Schedule``
(``interval_s``, ``timeout_s``, ``debounce_n`` of ``debounce_m``). Every run
is bounded by the timeout; a run that times out or raises becomes
``Check.failed(why)`` readings instead of ending the checker. Each run's
duration and outcome go to ``CheckStats`` (``PollingChecker.stats``; the
agent reports them in AgentHealth, for Diagnostics).

Debounce is masakari's: the last M samples of a component sit in a
``deque(maxlen=M)`` and a new level is reported only once N of them agree
on it. The first sample of a component is reported at once (the agent must
know every component's level from the start).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from agent.checkers.base import GONE, Reading, Status, alive
from doctor_common.agent_limits import MAX_RUNS, MAX_TEXT
from doctor_common.api import agent_pb2, common_pb2
from doctor_common.config import Section
from doctor_common.timeline import now_ns

log = logging.getLogger("doctor.agent.polling")

Level = tuple[Status, str, int]


def level(reading: Reading) -> Level:
    return reading.status, reading.fault_type, reading.severity


@dataclass(frozen=True)
class Schedule:
    interval_s: float = 10.0
    timeout_s: float = 5.0
    debounce_n: int = 1
    debounce_m: int = 1

    @classmethod
    def read(cls, cfg: Section, default: "Schedule") -> "Schedule":
        """The schedule keys of ``cfg``, falling back to ``default`` key by key."""
        interval = cfg.float("interval_s", default.interval_s, min=0.01)
        timeout = cfg.float("timeout_s", default.timeout_s, min=0.01)
        m = cfg.int("debounce_m", default.debounce_m, min=1, max=100)
        n = cfg.int("debounce_n", min(default.debounce_n, m), min=1, max=100)
        if n > m:
            raise cfg.error("debounce_n", f"must be at most debounce_m ({m}), got {n}")
        return cls(float(interval), float(timeout), n, m)

    @property
    def liveness_s(self) -> float:
        """How long a healthy loop on this schedule can stay silent."""
        return 2 * (self.interval_s + self.timeout_s) + 5.0


class Debouncer:
    """N-of-M agreement for one component's level."""

    def __init__(self, n: int, m: int) -> None:
        self.n = n
        self.window: deque[Level] = deque(maxlen=m)
        self.reported: Reading | None = None

    def feed(self, reading: Reading) -> Reading | None:
        """The reading to report, or None while the level has not changed or not enough samples agree."""
        key = level(reading)
        self.window.append(key)
        if self.reported is not None and (key == level(self.reported) or self.window.count(key) < self.n):
            return None
        self.reported = reading
        return reading


@dataclass(frozen=True)
class RunRecord:
    started_unix_ns: int
    duration_s: float
    outcome: str  # ok, warning, fault, unknown (the worst reading), timeout or error
    detail: str = ""


class CheckStats:
    """Runs of one check: counters and the most recent records."""

    def __init__(self, keep: int = 32) -> None:
        self.runs = 0
        self.failures = 0  # timeouts and errors
        self.total_s = 0.0
        self.recent: deque[RunRecord] = deque(maxlen=keep)

    def record(self, rec: RunRecord) -> None:
        self.runs += 1
        self.total_s += rec.duration_s
        if rec.outcome in ("timeout", "error"):
            self.failures += 1
        self.recent.append(rec)

    @property
    def last(self) -> RunRecord | None:
        return self.recent[-1] if self.recent else None

    def to_proto(self, check: str, recent: int = MAX_RUNS) -> agent_pb2.CheckRuns:
        """This check's runs as the agent reports them in AgentHealth (the ``recent`` latest runs)."""
        return agent_pb2.CheckRuns(
            check=check, runs=self.runs, failures=self.failures,
            mean_duration_ms=1000 * self.total_s / self.runs if self.runs else 0.0,
            recent=[agent_pb2.CheckRun(started_unix_nanos=r.started_unix_ns, duration_ms=1000 * r.duration_s,
                                       outcome=r.outcome, detail=r.detail[:MAX_TEXT])
                    for r in list(self.recent)[-recent:]])


class Check(abc.ABC):
    """One probe on its own schedule, reporting one or more components."""

    def __init__(self, name: str, schedule: Schedule) -> None:
        self.name = name
        self.schedule = schedule
        self.last: dict[str, Reading] = {}  # the latest level reported per component

    @abc.abstractmethod
    async def probe(self) -> list[Reading]:
        """One run: a reading per component. Cancelled at the timeout; clean up in ``finally``."""

    def failed(self, why: str) -> list[Reading]:
        """Readings for a run that timed out or raised: by default every known component becomes UNKNOWN."""
        return [Reading(c, Status.UNKNOWN, severity=common_pb2.SEVERITY_INDETERMINATE,
                        description=f"{self.name} check failed: {why}", details={"check": self.name})
                for c in self.last]

    def debounced(self, reading: Reading) -> bool:
        """False for readings reported at once (edges such as SEL entries)."""
        return True

    async def close(self) -> None:
        """Release what the probes hold (a session, a socket); called when the checker's watch ends."""


def outcome(readings: list[Reading]) -> str:
    worst = max((r.status for r in readings if r.status != Status.OK), default=Status.OK,
                key=lambda s: (Status.OK, Status.UNKNOWN, Status.WARNING, Status.FAULT).index(s))
    return worst.name.lower()


class PollingChecker:
    """Runs its checks, each in its own loop, and yields their debounced readings."""

    name = "polling"

    def __init__(self, checks: list[Check]) -> None:
        if not checks:
            raise ValueError(f"{self.name} checker has nothing to check")
        self.checks = list(checks)
        self.stats: dict[str, CheckStats] = {c.name: CheckStats() for c in self.checks}

    @property
    def liveness_s(self) -> float:
        return max(c.schedule.liveness_s for c in self.checks)

    async def run_once(self, check: Check) -> list[Reading]:
        """One timed run of ``check``; failures become ``check.failed()`` readings."""
        started_ns, t0 = now_ns(), time.perf_counter()
        try:
            # not asyncio.wait_for: on 3.11 it can swallow a cancellation that arrives as the probe finishes (a
            # thread's result, gh-86296), and the checker then never stops
            async with asyncio.timeout(check.schedule.timeout_s):
                readings = await check.probe()
            result, detail = outcome(readings), ""
        except TimeoutError:
            result, detail = "timeout", f"timed out after {check.schedule.timeout_s:g}s"
            readings = check.failed(detail)
        except Exception as exc:  # a failed run is an outcome, not the checker's end
            result, detail = "error", f"{type(exc).__name__}: {exc}"
            log.debug("%s/%s run failed", self.name, check.name, exc_info=True)
            readings = check.failed(detail)
        self.stats[check.name].record(RunRecord(started_ns, time.perf_counter() - t0, result, detail))
        return readings

    async def _loop(self, check: Check, queue: asyncio.Queue[Reading | BaseException]) -> None:
        debouncers: dict[str, Debouncer] = {}
        clock = asyncio.get_running_loop()
        interval = check.schedule.interval_s
        next_at = clock.time()
        while True:
            for reading in await self.run_once(check):
                gone = reading.details.get(GONE) == "true"
                if check.debounced(reading) and not gone:
                    d = debouncers.get(reading.component)
                    if d is None:
                        d = debouncers[reading.component] = Debouncer(check.schedule.debounce_n,
                                                                      check.schedule.debounce_m)
                    out = d.feed(reading)
                else:
                    out = reading
                if out is not None:
                    if gone:  # the component no longer exists: nothing of it is kept
                        debouncers.pop(out.component, None)
                        check.last.pop(out.component, None)
                    else:
                        check.last[out.component] = out
                    queue.put_nowait(out)
            alive()
            next_at += interval
            now = clock.time()
            if next_at < now:  # an overrun skips the missed ticks instead of bursting
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    async def watch(self) -> AsyncIterator[Reading]:
        queue: asyncio.Queue[Reading | BaseException] = asyncio.Queue()
        tasks = [asyncio.create_task(self._loop(c, queue), name=f"{self.name}/{c.name}") for c in self.checks]
        for task in tasks:  # a dead loop must end the watch (the supervisor restarts it), not go quiet
            task.add_done_callback(lambda t: t.cancelled() or queue.put_nowait(
                t.exception() or RuntimeError(f"{t.get_name()} ended")))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in self.checks), return_exceptions=True)

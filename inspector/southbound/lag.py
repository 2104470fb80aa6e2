"""How far behind the inspector runs: silence it could not observe is not evidence (DESIGN principle 9).

Two measures:

* **event-loop lag**: a task sleeps ``interval_s`` and notes how late it woke;
  any other loop (the liveness watch) reports its own late wake-ups through
  ``check()``, so a stall is counted once whoever notices it first. The time
  lost adds up in ``lost_s``; a host's silence is measured without the time
  lost since it was last heard (``Liveness.silence``).
* **stream read delay**: how long a heartbeat took from the agent's send to
  our read, relative to the smallest delay seen on that stream (so a host's
  constant clock offset cancels out); the latest per host, and the median
  across hosts (so no single agent, however wrong its clock, moves it).

The inspector is *behind* while either exceeds ``bound_s``, and for
``hold_s`` after the loop last did: messages queued meanwhile are still being
read. While behind, nothing is declared unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

log = logging.getLogger("doctor.inspector.lag")


class Lag:
    def __init__(self, bound_s: float, hold_s: float, interval_s: float = 0.02) -> None:
        self.bound_s = bound_s
        self.hold_s = hold_s
        self.interval_s = interval_s
        self.lost_s = 0.0              # total time the loop was late, since start
        self.worst_s = 0.0             # the worst single late wake-up, since start
        self.last_late_s = 0.0         # the latest late wake-up above the noise
        self._last_check = time.monotonic()
        self._behind_until = 0.0
        self._delays: dict[str, tuple[float, float]] = {}  # host -> (monotonic, its latest relative read delay)
        self._median: tuple[float, float] = (-1.0, 0.0)    # (computed at, value): a mass event asks often
        self._episode = False

    def check(self, now: float | None = None) -> float:
        """Note how late the loop runs: ``run`` checks every ``interval_s``, so a longer gap since the last check
        (by anyone) is time the loop did not run. Returns that time (0 when on time)."""
        now = time.monotonic() if now is None else now
        gap = now - self._last_check
        self._last_check = max(self._last_check, now)
        late = gap - self.interval_s
        if late <= max(0.002, self.interval_s / 2):  # scheduling noise
            return 0.0
        self.lost_s += late
        self.last_late_s = late
        self.worst_s = max(self.worst_s, late)
        if late > self.bound_s:
            self._behind_until = max(self._behind_until, now + self.hold_s)
            log.warning("the inspector's loop ran %.0f ms late: silence of that time is not counted", late * 1e3)
        return late

    def observe_read_delay(self, host: str, relative_s: float, now: float | None = None) -> None:
        self._delays[host] = (time.monotonic() if now is None else now, relative_s)
        if relative_s > self.bound_s:
            # a late read counts at once; an on-time one may wait for the next median (within 100 ms): at 10,000
            # agents a heartbeat arrives every half millisecond, and each median walks every host
            self._median = (-1.0, 0.0)

    def clear_read_delays(self) -> None:
        self._delays.clear()
        self._median = (-1.0, 0.0)

    def read_delay_s(self, now: float | None = None) -> float:
        """Median across hosts of their latest relative heartbeat read delay of the last second (0 without any);
        computed at most every 100 ms."""
        now = time.monotonic() if now is None else now
        if 0 <= now - self._median[0] < 0.1:
            return self._median[1]
        recent = [d for t, d in self._delays.values() if now - t <= 1.0]
        value = statistics.median(recent) if recent else 0.0
        self._median = (now, value)
        return value

    def behind(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        behind = now < self._behind_until or self.read_delay_s(now) > self.bound_s
        if behind != self._episode:
            self._episode = behind
            if behind:
                log.warning("the inspector is behind (loop lag or read delay over %.0f ms): no host is declared "
                            "unreachable until it catches up", self.bound_s * 1e3)
            else:
                log.warning("the inspector caught up: silence is judged again")
        return behind

    async def run(self) -> None:
        """Measure the loop's lag until cancelled."""
        self._last_check = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()

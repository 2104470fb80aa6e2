"""Full garbage collections that do not stall a daemon's loop for long.

CPython's full collection walks every object the collector tracks. An
inspector holding 6,000 agent streams tracks about 400,000 (its streams'
calls, records and messages), and each full collection took 240–460 ms,
every 10 s or so: the loop ran that late, so the inspector was behind and
judged no silence for a hold time each time (bench/scale.py). Nearly all
of those objects live as long as their stream.

So after each full collection, whatever survived it is frozen
(``gc.freeze``: moved to a permanent generation that collections skip),
and the next full collection walks only what is newer: measured on the
same run, 25–70 ms (100–140 ms at 10,000 streams). A frozen object that is later dropped is still freed
by reference counting; only cyclic garbage among frozen objects waits,
until ``thaw_s`` has passed: then everything is thawed and the next full
collection sweeps it all (one long pause every ``thaw_s``, which the lag
guard sees like any other).

Frozen garbage grows with churn: streams alive at a freeze and cut later
leave their cycles frozen. After a 10,000-agent connect storm the thaw's
collection took 1–4 s over 530–665 MB (bench/scale.py, ``gc_thaw_pause_ms``,
against 0.25–0.3 s without the storm). So the thaw also comes early, at
most every ``min_thaw_s``, once the frozen objects have grown ``grow``-fold
since the collection after the last thaw: the garbage a thaw sweeps stays
within a multiple of what lives.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("doctor.gc")

THAW_S = 600.0
GROW = 2.0
MIN_THAW_S = 60.0


class GcPacing:
    """Installed once per process, however many daemons run in it (a test's lab runs several)."""

    def __init__(self, thaw_s: float = THAW_S, grow: float = GROW, min_thaw_s: float = MIN_THAW_S) -> None:
        self.thaw_s = thaw_s
        self.grow = grow
        self.min_thaw_s = min_thaw_s
        self.users = 0
        self.freezes = 0
        self.thaws = 0
        self._thaw_at = 0.0
        self._thawed_at = 0.0  # the last thaw (or the install)
        self._baseline = 0  # objects frozen by the first freeze after the last thaw (or the install)

    def install(self) -> None:
        self.users += 1
        if self.users == 1:
            self._thawed_at = time.monotonic()
            self._thaw_at = self._thawed_at + self.thaw_s
            gc.callbacks.append(self._collected)

    def uninstall(self) -> None:
        self.users = max(0, self.users - 1)
        if self.users == 0 and self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
            gc.unfreeze()  # what the daemons held is theirs to free again, cycles included

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = time.monotonic()
        frozen = gc.get_freeze_count()
        grown = (self._baseline > 0 and frozen > self.grow * self._baseline
                 and now - self._thawed_at >= self.min_thaw_s)
        if now >= self._thaw_at or grown:
            self._thaw_at, self._thawed_at, self._baseline = now + self.thaw_s, now, 0
            self.thaws += 1
            gc.unfreeze()  # the next full collection walks everything once: cycles among old objects go
            log.debug("thawed %d frozen objects%s: the next full collection sweeps them all", frozen,
                      " (grown since the last thaw)" if grown else "")
            return
        gc.freeze()  # what survived a full collection is long-lived: later ones need not walk it again
        self.freezes += 1
        if not self._baseline:
            self._baseline = gc.get_freeze_count()


PACING = GcPacing()

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
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("doctor.gc")

THAW_S = 600.0


class GcPacing:
    """Installed once per process, however many daemons run in it (a test's lab runs several)."""

    def __init__(self, thaw_s: float = THAW_S) -> None:
        self.thaw_s = thaw_s
        self.users = 0
        self.freezes = 0
        self.thaws = 0
        self._thaw_at = 0.0

    def install(self) -> None:
        self.users += 1
        if self.users == 1:
            self._thaw_at = time.monotonic() + self.thaw_s
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
        if now >= self._thaw_at:
            self._thaw_at = now + self.thaw_s
            self.thaws += 1
            gc.unfreeze()  # the next full collection walks everything once: cycles among old objects go
            log.debug("thawed every frozen object: the next full collection sweeps them all")
            return
        gc.freeze()  # what survived a full collection is long-lived: later ones need not walk it again
        self.freezes += 1


PACING = GcPacing()

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
by reference counting; only cyclic garbage among frozen objects waits for
a thaw: everything is thawed and the next full collection sweeps it all.

That collection walks everything that lives, 0.9–1.3 s at 10,000 agent
streams, so a thaw comes only when it has something to sweep. The garbage
a thaw found was the cycles that ended streams left (5–15 objects with
every agent held, 346 after a storm that cut 17,400 streams), so a thaw
waits until ``thaw_after_ended`` streams ended since the last one
(``ended``, counted by the daemon), and comes at most every ``thaw_s``
and at least every ``thaw_max_s``. A steady fleet pauses once a day; a
churning one every ``thaw_s`` at most. The lag guard sees a pause like
any other stall.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger("doctor.gc")

THAW_S = 600.0             # the earliest a thaw follows the last
THAW_AFTER_ENDED = 1000    # streams ended since the last thaw: their cycles are what it sweeps
THAW_MAX_S = 86_400.0      # however steady the fleet, what else left cycles goes within a day


class GcPacing:
    """Installed once per process, however many daemons run in it (a test's lab runs several)."""

    def __init__(self, thaw_s: float = THAW_S, thaw_after_ended: int = THAW_AFTER_ENDED,
                 thaw_max_s: float = THAW_MAX_S) -> None:
        self.thaw_s = thaw_s
        self.thaw_after_ended = thaw_after_ended
        self.thaw_max_s = max(thaw_s, thaw_max_s)
        self.users = 0
        self.freezes = 0
        self.thaws = 0
        self.ended_since = 0  # streams ended since the last thaw
        self._thaw_at = 0.0   # not before
        self._thaw_by = 0.0   # whatever ended

    def ended(self, streams: int = 1) -> None:
        """A daemon's stream (an agent's, a subscriber's) ended: what it leaves in cycles waits for a thaw."""
        self.ended_since += streams

    def install(self) -> None:
        self.users += 1
        if self.users == 1:
            now = time.monotonic()
            self._thaw_at, self._thaw_by = now + self.thaw_s, now + self.thaw_max_s
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
        if now >= self._thaw_at and (self.ended_since >= self.thaw_after_ended or now >= self._thaw_by):
            self._thaw_at, self._thaw_by = now + self.thaw_s, now + self.thaw_max_s
            self.ended_since = 0
            self.thaws += 1
            gc.unfreeze()  # the next full collection walks everything once: cycles among old objects go
            log.debug("thawed every frozen object: the next full collection sweeps them all")
            return
        gc.freeze()  # what survived a full collection is long-lived: later ones need not walk it again
        self.freezes += 1


PACING = GcPacing()

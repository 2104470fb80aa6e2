"""Full collections walk only what is new: survivors frozen, everything thawed again every so often."""

from __future__ import annotations

import gc
import time
import weakref

from doctor_common.gc_pacing import GcPacing


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_survivors_of_a_full_collection_are_frozen_and_thawed_in_time() -> None:
    pacing = GcPacing(thaw_s=3600)
    pacing.install()
    try:
        kept = [Node() for _ in range(1000)]
        gc.collect()
        assert pacing.freezes == 1 and gc.get_freeze_count() >= len(kept)
        # frozen objects dropped without a cycle are still freed (reference counting), a cycle waits for the thaw
        pacing._thaw_at = time.monotonic()  # the thaw is due (the behaviour under test, not a wait)
        gc.collect()
        assert pacing.thaws == 1 and gc.get_freeze_count() == 0
        gc.collect()  # and the one after freezes again
        assert pacing.freezes == 2 and gc.get_freeze_count() > 0
    finally:
        pacing.uninstall()
    assert gc.get_freeze_count() == 0 and pacing._collected not in gc.callbacks


def test_a_cycle_frozen_then_dropped_is_swept_after_the_thaw() -> None:
    pacing = GcPacing(thaw_s=3600)
    pacing.install()
    try:
        cycles = [Node() for _ in range(100)]
        refs = [weakref.ref(n) for n in cycles]
        gc.collect()  # they survive it: frozen
        del cycles
        gc.collect()
        assert all(r() is not None for r in refs)  # frozen cyclic garbage waits for the thaw
        pacing._thaw_at = time.monotonic()  # the thaw is due (the behaviour under test, not a wait)
        gc.collect()  # thawed
        gc.collect()  # and swept
        assert all(r() is None for r in refs)
    finally:
        pacing.uninstall()


def test_installed_once_however_many_daemons_share_the_process() -> None:
    pacing = GcPacing()
    pacing.install()
    pacing.install()
    pacing.uninstall()
    assert pacing._collected in gc.callbacks
    pacing.uninstall()
    assert pacing._collected not in gc.callbacks


def test_the_thaw_comes_early_once_the_frozen_objects_have_grown() -> None:
    """Churn leaves cycles frozen (streams alive at a freeze, cut later): once the frozen objects have grown
    ``grow``-fold since the first freeze, the thaw does not wait for ``thaw_s``."""
    pacing = GcPacing(thaw_s=3600, grow=1.2, min_thaw_s=0)
    pacing.install()
    try:
        gc.collect()
        baseline = gc.get_freeze_count()
        assert pacing.freezes == 1 and baseline > 0
        churned = [Node() for _ in range(baseline // 2)]  # half as many again: frozen by the next collection
        refs = [weakref.ref(n) for n in churned[:100]]
        gc.collect()
        assert pacing.thaws == 0 and gc.get_freeze_count() > 1.2 * baseline
        del churned  # cut: cyclic garbage, frozen
        gc.collect()  # the frozen objects have grown past 1.2×: thawed, not frozen again
        assert pacing.thaws == 1 and gc.get_freeze_count() == 0
        gc.collect()  # and swept
        assert all(r() is None for r in refs)
    finally:
        pacing.uninstall()


def test_an_early_thaw_waits_for_min_thaw_s() -> None:
    """Grown fleets are not thawed over and over: an early thaw comes at most every ``min_thaw_s`` (counted from
    the install too)."""
    pacing = GcPacing(thaw_s=3600, grow=1.2, min_thaw_s=3600)
    pacing.install()
    try:
        gc.collect()
        grown = [Node() for _ in range(gc.get_freeze_count() // 2)]
        gc.collect()
        gc.collect()
        assert pacing.thaws == 0 and pacing.freezes == 3 and len(grown) > 0
    finally:
        pacing.uninstall()

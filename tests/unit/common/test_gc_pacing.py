"""Full collections walk only what is new: survivors frozen, everything thawed again once streams ended (or a
long time passed)."""

from __future__ import annotations

import gc
import time
import weakref

from doctor_common.gc_pacing import GcPacing


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_survivors_of_a_full_collection_are_frozen_and_thawed_in_time() -> None:
    pacing = GcPacing(thaw_s=3600, thaw_after_ended=10)
    pacing.install()
    try:
        kept = [Node() for _ in range(1000)]
        gc.collect()
        assert pacing.freezes == 1 and gc.get_freeze_count() >= len(kept)
        # frozen objects dropped without a cycle are still freed (reference counting), a cycle waits for the thaw
        pacing._thaw_at = time.monotonic()  # the thaw is due (the behaviour under test, not a wait)
        pacing.ended(10)
        gc.collect()
        assert pacing.thaws == 1 and gc.get_freeze_count() == 0
        gc.collect()  # and the one after freezes again
        assert pacing.freezes == 2 and gc.get_freeze_count() > 0
    finally:
        pacing.uninstall()
    assert gc.get_freeze_count() == 0 and pacing._collected not in gc.callbacks


def test_a_cycle_frozen_then_dropped_is_swept_after_the_thaw() -> None:
    pacing = GcPacing(thaw_s=3600, thaw_after_ended=1)
    pacing.install()
    try:
        cycles = [Node() for _ in range(100)]
        refs = [weakref.ref(n) for n in cycles]
        gc.collect()  # they survive it: frozen
        del cycles
        gc.collect()
        assert all(r() is not None for r in refs)  # frozen cyclic garbage waits for the thaw
        pacing._thaw_at = time.monotonic()  # the thaw is due (the behaviour under test, not a wait)
        pacing.ended()
        gc.collect()  # thawed
        gc.collect()  # and swept
        assert all(r() is None for r in refs)
    finally:
        pacing.uninstall()


def test_no_thaw_while_few_streams_ended_unless_a_long_time_passed() -> None:
    """The thaw's collection walks everything alive (about a second at 10,000 agent streams): a steady fleet,
    whose ended streams left nothing to sweep, is not paused for it every ``thaw_s``."""
    pacing = GcPacing(thaw_s=3600, thaw_after_ended=100, thaw_max_s=7200)
    pacing.install()
    try:
        kept = [Node() for _ in range(100)]
        gc.collect()
        pacing._thaw_at = time.monotonic()  # the thaw is due by time (the behaviour under test, not a wait)
        pacing.ended(99)
        gc.collect()
        gc.collect()
        assert pacing.thaws == 0 and gc.get_freeze_count() >= len(kept)
        pacing.ended()  # the hundredth stream ended: now the thaw comes
        gc.collect()
        assert pacing.thaws == 1 and gc.get_freeze_count() == 0 and pacing.ended_since == 0
        gc.collect()  # frozen again; the next thaw waits thaw_s, then for ended streams or thaw_max_s
        pacing._thaw_at = time.monotonic()
        gc.collect()
        assert pacing.thaws == 1
        pacing._thaw_by = time.monotonic()  # thaw_max_s passed with nothing ended
        gc.collect()
        assert pacing.thaws == 2 and gc.get_freeze_count() == 0
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

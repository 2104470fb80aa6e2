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

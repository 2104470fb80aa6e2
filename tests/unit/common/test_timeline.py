"""Stage durations and the profiler table."""

from doctor_common.api import common_pb2
from doctor_common.timeline import Stage, percentile, profile_table, stage_durations, stamp, total_ms


def _tl(**ms: float) -> common_pb2.Timeline:
    tl = common_pb2.Timeline()
    for name, at in ms.items():
        stamp(tl, Stage.Value(f"STAGE_{name.upper()}"), int(at * 1e6))
    return tl


def test_durations_add_up_to_total_even_with_concurrent_stages() -> None:
    """Servers updated before the host is marked down (concurrent steps) charge nothing negative; sum == total."""
    tl = _tl(observed=0, sent=1, received=2, correlated=3, fenced=5, marked_down=9, servers_updated=7, published=10)
    d = dict(stage_durations(tl))
    assert d[Stage.STAGE_MARKED_DOWN] == 4.0
    assert d[Stage.STAGE_SERVERS_UPDATED] == 0.0
    assert d[Stage.STAGE_PUBLISHED] == 1.0
    assert abs(sum(d.values()) - total_ms(tl)) < 1e-9  # type: ignore[operator]


def test_missing_stages_are_skipped() -> None:
    """An unfenced fault has no fenced stamp: the next stage is measured from correlated."""
    d = dict(stage_durations(_tl(observed=0, received=2, correlated=3, published=8)))
    assert Stage.STAGE_FENCED not in d and d[Stage.STAGE_PUBLISHED] == 5.0


def test_percentile_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, p100 the max."""
    values = [float(i) for i in range(100, 0, -1)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)


def test_profile_table_sorted_by_cost_with_shares() -> None:
    """The seeds' profiler table: costliest stage first, shares sum to 100 %."""
    rows = profile_table([_tl(observed=0, received=1, fenced=5), _tl(observed=0, received=2, fenced=6),
                         _tl(observed=0, received=1.5, fenced=3)])
    assert [(r[0], r[1]) for r in rows] == [("fenced", 4.0), ("received", 1.5)]
    assert abs(sum(r[2] for r in rows) - 100.0) < 1e-9

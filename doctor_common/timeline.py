"""Per-fault stage timestamps (DESIGN principle 7) and the profiler's table."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

from doctor_common.api import common_pb2

Stage = common_pb2.Stage
# the chain's order (not the enum's: the two-phase notice's stages were added later)
STAGES: tuple[int, ...] = (
    Stage.STAGE_OBSERVED, Stage.STAGE_SENT, Stage.STAGE_RECEIVED, Stage.STAGE_CORRELATED,
    Stage.STAGE_SUSPECT_PUBLISHED, Stage.STAGE_FENCED, Stage.STAGE_FENCE_PUBLISHED, Stage.STAGE_MARKED_DOWN,
    Stage.STAGE_SERVERS_UPDATED, Stage.STAGE_PUBLISHED, Stage.STAGE_DELIVERED)
assert set(STAGES) == set(Stage.values()) - {Stage.STAGE_UNSPECIFIED}, "a Stage is missing from the chain's order"


def now_ns() -> int:
    """Wall clock in ns: stamps are compared across processes (and hosts)."""
    return time.time_ns()


def stage_name(stage: int) -> str:
    return Stage.Name(stage).removeprefix("STAGE_").lower()


def stamp(timeline: common_pb2.Timeline, stage: int, at_ns: int | None = None) -> None:
    timeline.stamps.add(stage=stage, unix_nanos=at_ns if at_ns is not None else now_ns())


def as_dict(timeline: common_pb2.Timeline) -> dict[int, int]:
    return {s.stage: s.unix_nanos for s in timeline.stamps}


def stage_durations(timeline: common_pb2.Timeline) -> list[tuple[int, float]]:
    """(stage, ms it added to the chain), in stage order, from OBSERVED.

    Independent stages run concurrently (servers may be updated before the host
    is marked down), so each stage is charged only for how far it pushed the
    latest stamp forward: the durations add up to the total, none is negative.
    """
    stamps = as_dict(timeline)
    out: list[tuple[int, float]] = []
    latest: int | None = None
    for st in STAGES:
        if st not in stamps:
            continue
        if latest is not None:
            out.append((st, max(0, stamps[st] - latest) / 1e6))
            latest = max(latest, stamps[st])
        else:
            latest = stamps[st]
    return out


def total_ms(timeline: common_pb2.Timeline) -> float | None:
    stamps = as_dict(timeline)
    if not stamps:
        return None
    return (max(stamps.values()) - min(stamps.values())) / 1e6


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def profile_table(timelines: Iterable[common_pb2.Timeline]) -> list[tuple[str, float, float]]:
    """The seeds' profiler table: (stage, median ms spent reaching it, share of total), costliest first."""
    per_stage: dict[int, list[float]] = {}
    for tl in timelines:
        for st, ms in stage_durations(tl):
            per_stage.setdefault(st, []).append(ms)
    medians = {st: percentile(v, 50) for st, v in per_stage.items()}
    total = sum(medians.values()) or 1.0
    rows = [(stage_name(st), ms, 100.0 * ms / total) for st, ms in medians.items()]
    return sorted(rows, key=lambda r: -r[1])


def format_table(rows: list[tuple[str, float, float]]) -> str:
    lines = [f"{'stage':<16} {'time':>10} {'share':>7}", "-" * 35]
    lines += [f"{name:<16} {ms:>8.2f}ms {share:>6.1f}%" for name, ms, share in rows]
    lines.append(f"{'total':<16} {sum(r[1] for r in rows):>8.2f}ms")
    return "\n".join(lines)

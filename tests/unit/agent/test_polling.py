"""The polling base: N-of-M debounce, timed runs with recorded outcomes, schedules read from config."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import pytest

from agent.checkers.base import Reading, Status
from agent.checkers.polling import Check, Debouncer, PollingChecker, Schedule
from doctor_common.api import common_pb2
from doctor_common.config import ConfigError, Section


def ok(component: str = "c") -> Reading:
    return Reading(component, Status.OK)


def fault(component: str = "c") -> Reading:
    return Reading(component, Status.FAULT, "compute.test.down", common_pb2.SEVERITY_CRITICAL, "down")


def feed(d: Debouncer, samples: str) -> str:
    """Feed 'O'/'F' samples; return what was reported per sample ('.' for nothing)."""
    out = ""
    for s in samples:
        r = d.feed(ok() if s == "O" else fault())
        out += "." if r is None else ("O" if r.status == Status.OK else "F")
    return out


def test_first_sample_is_reported_at_once() -> None:
    """The agent must know every component's level from the start, whatever the debounce."""
    assert feed(Debouncer(3, 5), "F") == "F"


def test_a_new_level_needs_n_of_the_last_m_samples() -> None:
    """2-of-3: a fault is reported once two of the last three runs saw it, and so is the recovery."""
    assert feed(Debouncer(2, 3), "OFOF") == "O..F"
    assert feed(Debouncer(2, 3), "OFFOO") == "O.F.O"


def test_a_lone_flap_is_never_reported() -> None:
    """Single bad samples between good ones never reach N=2 within any window of 3."""
    assert feed(Debouncer(2, 3), "OFOOFOOFOO") == "O........."


def test_one_of_one_reports_every_change() -> None:
    """Without debounce every level change goes out, unchanged levels do not."""
    assert feed(Debouncer(1, 1), "OFFOF") == "OF.OF"


class Scripted(Check):
    """A check whose runs follow a script: readings, an exception, or 'hang'."""

    def __init__(self, script: list[object], schedule: Schedule) -> None:
        super().__init__("scripted", schedule)
        self.script = list(script)
        self.runs = 0

    async def probe(self) -> list[Reading]:
        self.runs += 1
        step = self.script.pop(0) if self.script else self.last_step
        self.last_step = step
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, Exception):
            raise step
        return list(step)  # type: ignore[call-overload]


class Checker(PollingChecker):
    name = "scripted"


async def test_each_run_is_timed_and_its_outcome_recorded() -> None:
    """ok, warning, error and timeout runs are counted; failures become the check's failed() readings."""
    warn = Reading("c", Status.WARNING, "compute.test.hot", common_pb2.SEVERITY_WARNING)
    check = Scripted([[ok()], [warn], RuntimeError("boom"), "hang"], Schedule(1.0, 0.05))
    checker = Checker([check])
    check.last["c"] = ok()
    results = [await checker.run_once(check) for _ in range(4)]
    stats = checker.stats["scripted"]
    assert [r.outcome for r in stats.recent] == ["ok", "warning", "error", "timeout"]
    assert stats.runs == 4 and stats.failures == 2
    assert "RuntimeError: boom" in stats.recent[2].detail
    assert 0.05 <= stats.recent[3].duration_s < 1.0
    assert results[2][0].status == Status.UNKNOWN and results[3][0].status == Status.UNKNOWN
    assert "timed out after 0.05s" in results[3][0].description


async def test_watch_reports_debounced_levels() -> None:
    """Through watch(), a fault seen once is swallowed; seen twice running (2-of-2) it is reported."""
    check = Scripted([[ok()], [fault()], [ok()], [fault()], [fault()], [ok()]], Schedule(0.005, 1.0, 2, 2))
    seen: list[tuple[Status, int]] = []
    async with asyncio.timeout(5), aclosing(Checker([check]).watch()) as stream:
        async for reading in stream:
            seen.append((reading.status, check.runs))
            if len(seen) == 2:
                break
    assert seen == [(Status.OK, 1), (Status.FAULT, 5)]


class Broken(Scripted):
    def debounced(self, reading: Reading) -> bool:
        if reading.status == Status.FAULT:
            raise LookupError("a bug outside the probe")
        return True


async def test_a_dead_check_loop_ends_the_watch() -> None:
    """A loop that breaks outside its probe ends watch() with that error (the supervisor then restarts it)."""
    check = Broken([[ok()], [fault()]], Schedule(0.005, 1.0))
    with pytest.raises(LookupError):
        async with asyncio.timeout(5), aclosing(Checker([check]).watch()) as stream:
            async for _ in stream:
                pass


def section(data: dict[str, object]) -> Section:
    return Section(Path("/etc/doctor/agent.toml"), data, "checkers.x.")


def test_schedule_falls_back_key_by_key() -> None:
    """Unset keys take the checker's defaults; set ones override them."""
    s = Schedule.read(section({"interval_s": 2, "debounce_m": 5}), Schedule(10, 3, 2, 3))
    assert s == Schedule(2.0, 3.0, 2, 5)


@pytest.mark.parametrize("data, key", [
    ({"debounce_n": 4, "debounce_m": 3}, "checkers.x.debounce_n"),
    ({"interval_s": 0}, "checkers.x.interval_s"),
    ({"timeout_s": "1s"}, "checkers.x.timeout_s"),
    ({"debounce_m": 0}, "checkers.x.debounce_m"),
])
def test_bad_schedule_names_the_key(data: dict[str, object], key: str) -> None:
    """A wrong schedule value fails naming the file and the dotted key."""
    with pytest.raises(ConfigError) as err:
        Schedule.read(section(data), Schedule())
    assert err.value.key == key and err.value.path == "/etc/doctor/agent.toml"

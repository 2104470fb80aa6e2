"""``ipmi``: the host's BMC through pyghmi: sensor health and the System Event Log.

Sensors (temperatures, fans, power supplies, memory, processors by default)
map pyghmi's health to a level: warning thresholds and predictive states
are WARNING (the seeds' fault prediction), critical or non-recoverable ones
FAULT/critical. New SEL entries are reported at once (not debounced): each
sensor named by the SEL has a component ``ipmi:sel:<sensor>`` raised by an
assertion and cleared by its deassertion or by clearing the SEL. A BMC that
stops answering is itself a WARNING (``ipmi:bmc``); the sensors then keep
their last known level.

pyghmi is blocking and slow to give up on a dead BMC (≈28 s), so every call
runs in its own daemon thread, one at a time per BMC, bounded by the
check's timeout; while an abandoned call is still blocked the BMC counts as
unreachable and no second call is started (notes/limits.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.checkers.base import Reading, Status
from agent.checkers.polling import Check, PollingChecker, Schedule
from doctor_common.api import common_pb2
from doctor_common.config import Section
from doctor_common.ipmi_session import Sessions, start_in_daemon_thread

log = logging.getLogger("doctor.agent.ipmi")
T = TypeVar("T")

UNREACHABLE = "compute.host.ipmi.unreachable"
DEFAULT = Schedule(interval_s=10.0, timeout_s=10.0, debounce_n=2, debounce_m=3)
# pyghmi's sensor type names -> our category (the fault type is compute.host.ipmi.<category>)
CATEGORIES: dict[str, str] = {
    "Temperature": "temperature", "Fan": "fan", "Cooling Device": "fan",
    "Power Supply": "power_supply", "Power Unit": "power_supply", "PSU Redundancy": "power_supply",
    "Memory": "memory", "Processor": "processor", "Voltage": "voltage", "Current": "voltage",
}
DEFAULT_CATEGORIES = ("temperature", "fan", "power_supply", "memory", "processor")
KNOWN_CATEGORIES = (*DEFAULT_CATEGORIES, "voltage", "other")
_WARNING, _CRITICAL, _FAILED = 1, 2, 4  # pyghmi.constants.Health bits


def category(sensor_type: str) -> str:
    return CATEGORIES.get(sensor_type, "other")


def health_level(health: int) -> tuple[Status, int]:
    """pyghmi's health bits -> (status, severity)."""
    if health & (_CRITICAL | _FAILED):
        return Status.FAULT, common_pb2.SEVERITY_CRITICAL
    if health & _WARNING:
        return Status.WARNING, common_pb2.SEVERITY_WARNING
    return Status.OK, common_pb2.SEVERITY_CLEARED


def sensor_reading(sensor: Any) -> Reading:
    """A pyghmi ``SensorReading`` (name, type, value, units, states, health, unavailable) as a Reading."""
    cat = category(sensor.type)
    details = {"sensor": sensor.name, "type": sensor.type}
    if sensor.value is not None:
        details["value"] = f"{sensor.value:g}"
        details["units"] = sensor.units
    if sensor.states:
        details["states"] = ", ".join(sensor.states)
    component = f"ipmi:{sensor.name}"
    if sensor.unavailable:
        return Reading(component, Status.UNKNOWN, severity=common_pb2.SEVERITY_INDETERMINATE,
                       description=f"{sensor.name}: reading unavailable", details=details)
    status, severity = health_level(sensor.health)
    if status == Status.OK:
        return Reading(component, status, details=details)
    shown = f" {sensor.value:g} {sensor.units}".rstrip() if sensor.value is not None else ""
    return Reading(component, status, f"compute.host.ipmi.{cat}", severity,
                   f"{sensor.name}{shown}: {', '.join(sensor.states) or 'unhealthy'}", details)


class SelTracker:
    """Which SEL entries were seen, and the unresolved assertions of each sensor they name."""

    def __init__(self, replay: bool = True) -> None:
        self.replay = replay
        self.seen: set[int] = set()
        self.active: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}  # component -> event id -> entry
        self.key: tuple[int, int, int] | None = None  # (entries, last addition, last erase) of Get SEL Info

    def changed(self, key: tuple[int, int, int]) -> bool:
        return key != self.key

    def update(self, key: tuple[int, int, int], entries: list[dict[str, Any]]) -> list[Reading]:
        """Readings of the SEL components that changed, given the BMC's whole SEL now."""
        first = self.key is None
        cleared = not first and (key[2] != self.key[2] or key[0] < self.key[0])  # type: ignore[index]
        self.key = key
        touched: set[str] = set()
        if cleared:
            log.info("the SEL was cleared: every SEL-raised component is cleared")
            touched.update(self.active)
            self.active = {comp: {} for comp in self.active}
            self.seen.clear()
        for entry in entries:
            record = entry.get("record_id")
            if record in self.seen:
                continue
            self.seen.add(record)
            if first and not self.replay:
                continue
            comp = self._apply(entry)
            if comp is not None:
                touched.add(comp)
                if not first:
                    log.info("new SEL entry %s: %s %s%s", record, entry.get("component"), entry.get("event"),
                             " deasserted" if entry.get("deassertion") else "")
        return [self.reading(c) for c in sorted(touched)]

    def _apply(self, entry: dict[str, Any]) -> str | None:
        if "event" not in entry:
            return None  # OEM record: nothing we can judge
        name = entry.get("component") or entry.get("component_type") or "system"
        comp = f"ipmi:sel:{name}"
        active = self.active.setdefault(comp, {})
        event_id = str(entry.get("event_id") or entry["event"])
        if entry.get("deassertion"):
            if active.pop(event_id, None) is None:
                return None
        elif int(entry.get("severity") or 0):
            active[event_id] = (int(entry["severity"]), entry)
        else:
            return None
        return comp

    def reading(self, comp: str) -> Reading:
        active = self.active.get(comp, {})
        if not active:
            return Reading(comp, Status.OK, details={"source": "sel"})
        health, entry = max(active.values(), key=lambda v: v[0])
        status, severity = health_level(health)
        cat = category(entry.get("component_type") or "")
        events = "; ".join(e.get("event", "") for _, e in active.values())
        return Reading(comp, status, f"compute.host.ipmi.{cat if cat != 'other' else 'event'}", severity,
                       f"{comp.removeprefix('ipmi:sel:')}: {events} (SEL)",
                       {"source": "sel", "record_id": str(entry.get("record_id", "")),
                        "event": str(entry.get("event", "")), "timestamp": str(entry.get("timestamp", "")),
                        "sensor_type": str(entry.get("component_type") or "")})


class BmcBusy(Exception):
    """An earlier call to this BMC is still blocked in pyghmi."""


class BmcWorker:
    """One BMC session (``SensorClient``) per BMC, used by one call at a time, each call in a daemon thread.

    A daemon thread, not an executor: a call stuck on a dead BMC must neither
    block the next poll's decision nor keep the process from exiting.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._sessions = Sessions()  # one, under the key None
        self._busy: asyncio.Future[Any] | None = None

    async def call(self, fn: Callable[[Any], T]) -> T:
        if self._busy is not None and not self._busy.done():
            raise BmcBusy("an earlier call is still waiting for the BMC")
        self._busy = start_in_daemon_thread(functools.partial(self._sessions.call, None, self._connect, fn),
                                            "doctor-ipmi")
        return await asyncio.shield(self._busy)  # the caller's run timeout bounds the wait; the thread runs on

    async def close(self, timeout: float = 0.5) -> None:
        """Log out and forget the session, waited on at most ``timeout``; the event loop runs on."""
        await self._sessions.close(timeout)


@dataclass
class _Poll:
    sensors: list[Any]
    sel_key: tuple[int, int, int] | None = None
    sel: list[dict[str, Any]] | None = None  # the whole SEL, fetched only when Get SEL Info changed
    sel_error: str = ""  # the BMC answered the sensors but not the SEL


class BmcCheck(Check):
    def __init__(self, schedule: Schedule, worker: BmcWorker, target: str, categories: tuple[str, ...],
                 ignore: tuple[str, ...], sel: SelTracker | None) -> None:
        super().__init__("bmc", schedule)
        self.worker = worker
        self.target = target
        self.categories = categories
        self.ignore = set(ignore)
        self.sel = sel
        self.sel_error = ""

    def _poll(self, cmd: Any) -> _Poll:  # in the worker thread
        poll = _Poll([s for s in cmd.get_sensor_data()
                      if s.name not in self.ignore and category(s.type) in self.categories])
        if self.sel is not None:
            from pyghmi.exceptions import IpmiException
            try:
                data = bytes(cmd.xraw_command(netfn=0x0A, command=0x40)["data"])  # Get SEL Info
                count, _free, added, erased = struct.unpack_from("<HHII", data, 1)
                poll.sel_key = (count, added, erased)
                if self.sel.changed(poll.sel_key):
                    poll.sel = list(cmd.get_event_log()) if count else []
            except (IpmiException, struct.error) as exc:
                if "no longer connected" in str(exc):
                    raise  # the session broke: the BMC, not its SEL, is the problem
                poll.sel_error = f"{type(exc).__name__}: {exc}"
        return poll

    async def close(self) -> None:
        await self.worker.close()

    async def probe(self) -> list[Reading]:
        poll = await self.worker.call(self._poll)
        readings = [Reading("ipmi:bmc", Status.OK, details={"bmc": self.target})]
        readings += [sensor_reading(s) for s in poll.sensors]
        if self.sel is not None and poll.sel is not None and poll.sel_key is not None:
            readings += self.sel.update(poll.sel_key, poll.sel)
        if poll.sel_error != self.sel_error:
            if poll.sel_error:  # said once per change: a BMC without a SEL must not flood the journal
                log.warning("BMC %s answers sensors but not its SEL: %s", self.target, poll.sel_error)
            self.sel_error = poll.sel_error
        return readings

    def failed(self, why: str) -> list[Reading]:
        return [Reading("ipmi:bmc", Status.WARNING, UNREACHABLE, common_pb2.SEVERITY_WARNING,
                        f"BMC {self.target} does not answer: {why}", {"bmc": self.target})]

    def debounced(self, reading: Reading) -> bool:
        return not reading.component.startswith("ipmi:sel:")


class IpmiChecker(PollingChecker):
    name = "ipmi"

    def __init__(self, check: BmcCheck) -> None:
        super().__init__([check])

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "IpmiChecker":
        # in-band by default: the host reads its own BMC with no credentials and no route to the BMC network
        interface = cfg.choice("interface", ("lan", "local"), "lan" if "address" in cfg.data else "local")
        if interface == "lan":
            address = cfg.str("address")
            port = cfg.int("port", 623, min=1, max=65535)
            username = cfg.str("username", "admin")
            password = cfg.secret("password")
            if not password:
                raise cfg.error("password", "is required over the LAN (password_file = \"...\" keeps it "
                                            "out of this file)")
            target = f"{address}:{port}"

            def connect() -> Any:
                from agent.checkers.ipmi_client import SensorClient  # pyghmi: only when an ipmi checker runs
                return SensorClient.lan(address, port, username, password)
        else:
            target = cfg.str("device", "/dev/ipmi0")

            def connect() -> Any:
                from agent.checkers.ipmi_client import SensorClient
                return SensorClient.local(target)
        schedule = Schedule.read(cfg, DEFAULT)
        categories = tuple(cfg.str_list("categories", list(DEFAULT_CATEGORIES)))
        for i, c in enumerate(categories):
            if c not in KNOWN_CATEGORIES:
                raise cfg.error(f"categories[{i}]", f"unknown category {c!r}; known: {', '.join(KNOWN_CATEGORIES)}")
        ignore = tuple(cfg.str_list("ignore", []))
        sel = SelTracker(replay=cfg.bool("sel_replay", True)) if cfg.bool("sel", True) else None
        cfg.done()
        return cls(BmcCheck(schedule, BmcWorker(connect), target, categories, ignore, sel))

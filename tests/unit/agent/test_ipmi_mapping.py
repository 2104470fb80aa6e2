"""ipmi: pyghmi sensor health and SEL entries mapped to component levels (pure functions, no BMC)."""

from __future__ import annotations

from typing import Any

from pyghmi.ipmi.sdr import SensorReading

from agent.checkers.base import Status
from agent.checkers.ipmi import SelTracker, health_level, sensor_reading
from doctor_common.api import common_pb2

WARNING, CRITICAL, FAILED = 1, 2, 4


def sensor(name: str, kind: str, health: int, value: float | None = None, states: list[str] | None = None,
           unavailable: bool = False) -> SensorReading:
    data: dict[str, Any] = {"name": name, "type": kind, "health": health, "states": states or [], "state_ids": [],
                            "value": value, "imprecision": 0.5}
    if unavailable:
        data = {"name": name, "type": kind, "unavailable": 1}
    return SensorReading(data, "°C" if kind == "Temperature" else "")


def test_health_bits_map_to_status_and_severity() -> None:
    """Warning feeds prediction (WARNING/warning); critical and non-recoverable are faults (critical)."""
    assert health_level(0) == (Status.OK, common_pb2.SEVERITY_CLEARED)
    assert health_level(WARNING) == (Status.WARNING, common_pb2.SEVERITY_WARNING)
    assert health_level(CRITICAL) == (Status.FAULT, common_pb2.SEVERITY_CRITICAL)
    assert health_level(FAILED | WARNING) == (Status.FAULT, common_pb2.SEVERITY_CRITICAL)


def test_a_hot_cpu_is_a_temperature_fault_naming_value_and_threshold() -> None:
    """The fault type follows the sensor's category; the description carries the value and crossed thresholds."""
    r = sensor_reading(sensor("CPU1 Temp", "Temperature", CRITICAL | WARNING, 95.0,
                              ["upper non-critical threshold", "upper critical threshold"]))
    assert (r.component, r.status, r.fault_type) == ("ipmi:CPU1 Temp", Status.FAULT, "compute.host.ipmi.temperature")
    assert "95 °C" in r.description and "upper critical threshold" in r.description
    assert r.details["value"] == "95"


def test_predictive_psu_failure_is_a_warning_and_healthy_is_ok() -> None:
    """Discrete states carry their own health; a healthy sensor has no fault type."""
    r = sensor_reading(sensor("PSU1", "Power Supply", WARNING, states=["Present", "Predictive failure"]))
    assert (r.status, r.fault_type, r.severity) == (Status.WARNING, "compute.host.ipmi.power_supply",
                                                    common_pb2.SEVERITY_WARNING)
    healthy = sensor_reading(sensor("DIMM A1", "Memory", 0, states=["Present"]))
    assert (healthy.status, healthy.fault_type) == (Status.OK, "")


def test_an_unavailable_reading_is_unknown_not_ok() -> None:
    """The BMC cannot read the sensor: say so rather than call it healthy."""
    assert sensor_reading(sensor("FAN3", "Fan", 0, unavailable=True)).status == Status.UNKNOWN


def entry(record: int, component: str, event: str, severity: int, deassert: bool = False,
          kind: str = "Memory", event_id: str = "111.0") -> dict[str, Any]:
    return {"record_id": record, "component": component, "component_type": kind, "event": event,
            "severity": severity, "deassertion": deassert, "event_id": event_id, "timestamp": "2026-01-01T00:00:00"}


def test_sel_replays_at_start_and_follows_new_entries() -> None:
    """Unresolved assertions since the last clear form the level; a new entry changes only its sensor."""
    sel = SelTracker()
    first = sel.update((1, 100, 0), [entry(1, "DIMM A1", "Correctable error", WARNING)])
    assert [(r.component, r.status) for r in first] == [("ipmi:sel:DIMM A1", Status.WARNING)]
    assert not sel.changed((1, 100, 0)) and sel.changed((2, 101, 0))
    entries = [entry(1, "DIMM A1", "Correctable error", WARNING),
               entry(2, "DIMM A1", "Uncorrectable error", FAILED, event_id="111.1")]
    [r] = sel.update((2, 101, 0), entries)
    assert (r.status, r.fault_type, r.details["record_id"]) == (Status.FAULT, "compute.host.ipmi.memory", "2")
    assert "Uncorrectable error" in r.description
    assert sel.update((2, 101, 0), entries) == []  # nothing new, nothing reported


def test_a_deassertion_resolves_only_its_own_event() -> None:
    """Deasserting the critical event leaves the warning one; deasserting that clears the sensor."""
    sel = SelTracker()
    entries = [entry(1, "DIMM A1", "Correctable error", WARNING),
               entry(2, "DIMM A1", "Uncorrectable error", FAILED, event_id="111.1")]
    sel.update((2, 10, 0), entries)
    entries.append(entry(3, "DIMM A1", "Uncorrectable error deasserted", 0, deassert=True, event_id="111.1"))
    assert [r.status for r in sel.update((3, 11, 0), entries)] == [Status.WARNING]
    entries.append(entry(4, "DIMM A1", "Correctable error deasserted", 0, deassert=True))
    assert [r.status for r in sel.update((4, 12, 0), entries)] == [Status.OK]


def test_clearing_the_sel_clears_what_it_raised() -> None:
    """An operator's `sel clear` (erase time changes) is the acknowledgement: raised components go OK."""
    sel = SelTracker()
    sel.update((1, 10, 0), [entry(1, "CPU1 Temp", "Upper critical", CRITICAL, kind="Temperature")])
    cleared = sel.update((0, 10, 11), [])
    assert [(r.component, r.status) for r in cleared] == [("ipmi:sel:CPU1 Temp", Status.OK)]
    # record ids start again at 1 after a clear: a new record 1 is new
    [again] = sel.update((1, 12, 11), [entry(1, "CPU1 Temp", "Upper critical", CRITICAL, kind="Temperature")])
    assert again.status == Status.FAULT


def test_without_replay_old_entries_are_history() -> None:
    """sel_replay = false: entries present at start are not judged, later ones are."""
    sel = SelTracker(replay=False)
    assert sel.update((1, 10, 0), [entry(1, "DIMM A1", "Correctable error", WARNING)]) == []
    [r] = sel.update((2, 11, 0), [entry(1, "DIMM A1", "Correctable error", WARNING),
                                  entry(2, "PSU1", "Failure", CRITICAL, kind="Power Supply", event_id="111.1")])
    assert (r.component, r.fault_type) == ("ipmi:sel:PSU1", "compute.host.ipmi.power_supply")


def test_oem_and_informational_entries_raise_nothing() -> None:
    """Records pyghmi cannot decode and OK-severity assertions ('Present') change no level."""
    sel = SelTracker()
    assert sel.update((2, 10, 0), [{"record_id": 1, "oemdata": b"\x01"},
                                   entry(2, "PSU1", "Present", 0, kind="Power Supply")]) == []


def test_discarding_an_in_band_session_is_harmless() -> None:
    """An in-band session has none of the LAN session's tables: forgetting it must not raise in the worker."""
    from doctor_common.ipmi_session import discard

    class LocalSession:  # the shape of pyghmi's localsession.Session: no logout tables, no bmc_handlers
        def logout(self) -> None:
            raise OSError("device gone")

    class Client:
        ipmi_session = LocalSession()

    discard(Client())

"""Active alarms (ETSI IFA 005 aligned) and the resources they affect.

An alarm is raised on a physical resource (a host) with a root fault; the
virtual resources it affects (servers, ports) carry the same fault id as
their managed object's fault, so a consumer can tell they share one cause.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller_adapter.base import Port, Server
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.timeline import now_ns

Phase = fault_pb2.IncidentPhase
# an incident in one of these phases is withdrawn when its host is heard again (or its component recovers):
# nothing has been done to the host yet, or fencing failed and is being retried
WITHDRAWABLE = frozenset({Phase.INCIDENT_PHASE_SUSPECTED, Phase.INCIDENT_PHASE_HELD,
                          Phase.INCIDENT_PHASE_UNFENCED})


@dataclass
class Alarm:
    host: str               # the physical resource: a host, or a shared cause's switch, zone or "inspector"
    component: str          # the agent component that raised it ("" for host-level; "cause:<key>" for a cause)
    fault: common_pb2.Fault  # the root fault on the host
    fences: bool            # a fencing incident (vs. a notify-only alarm)
    servers: list[Server] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    admin_only: bool = False
    fenced: bool = False
    fencing_error: str = ""
    timeline: common_pb2.Timeline = field(default_factory=common_pb2.Timeline)
    phase: int = Phase.INCIDENT_PHASE_UNSPECIFIED
    silence: bool = False   # suspected for silence (not for evidence the host gave)
    held_by: str = ""       # the shared cause holding it ("switch:tor-1"), while held
    actions: tuple[str, ...] = ()  # the policy rule's actions (an incident's)
    fencing: bool = False   # a fence attempt is under way (its power-off may be in flight): not withdrawable

    def touch(self) -> None:
        """The alarm changed (a new phase, new details): IFA 005's updated state and changed time."""
        self.fault.state = common_pb2.ALARM_STATE_UPDATED
        self.fault.changed_time_unix_nanos = max(now_ns(), self.fault.changed_time_unix_nanos + 1)

    @property
    def withdrawable(self) -> bool:
        return self.fences and self.phase in WITHDRAWABLE and not self.fencing

    @property
    def id(self) -> str:
        return self.fault.fault_id

    def virtual_fault(self, resource_id: str) -> common_pb2.Fault:
        f = common_pb2.Fault()
        f.CopyFrom(self.fault)
        f.is_root_cause = False
        f.managed_object_id = resource_id
        return f


def alarm_to_json(alarm: Alarm) -> dict[str, Any]:
    """What a new leader needs to carry on with the alarm (resources by id: it re-reads them)."""
    return {"host": alarm.host, "component": alarm.component, "fences": alarm.fences, "admin_only": alarm.admin_only,
            "fenced": alarm.fenced, "fencing_error": alarm.fencing_error,
            "servers": [s.id for s in alarm.servers], "ports": [p.id for p in alarm.ports],
            "fault": base64.b64encode(alarm.fault.SerializeToString()).decode(),
            "timeline": base64.b64encode(alarm.timeline.SerializeToString()).decode(),
            "phase": alarm.phase, "silence": alarm.silence, "held_by": alarm.held_by, "actions": list(alarm.actions)}


def alarm_from_json(d: dict[str, Any], server: Callable[[str], Server | None],
                    port: Callable[[str], Port | None]) -> Alarm:
    """The inverse of ``alarm_to_json``; ``server``/``port`` look ids up in the current resource map."""
    servers = [x for x in (server(i) for i in d.get("servers", [])) if x is not None]
    ports = [x for x in (port(i) for i in d.get("ports", [])) if x is not None]
    return Alarm(host=d["host"], component=d.get("component", ""),
                 fault=common_pb2.Fault.FromString(base64.b64decode(d["fault"])), fences=bool(d.get("fences")),
                 servers=servers, ports=ports, admin_only=bool(d.get("admin_only")), fenced=bool(d.get("fenced")),
                 fencing_error=d.get("fencing_error", ""),
                 timeline=common_pb2.Timeline.FromString(base64.b64decode(d.get("timeline", ""))),
                 phase=int(d.get("phase", 0)), silence=bool(d.get("silence")), held_by=str(d.get("held_by", "")),
                 actions=tuple(d.get("actions", ())))


def new_fault(host: str, fault_type: str, severity: int, event_ns: int, probable_cause: str,
              details: dict[str, str]) -> common_pb2.Fault:
    now = now_ns()
    return common_pb2.Fault(
        fault_id=uuid.uuid4().hex, fault_type=fault_type, severity=severity, event_time_unix_nanos=event_ns,
        probable_cause=probable_cause, is_root_cause=True, fault_details=details,
        state=common_pb2.ALARM_STATE_FIRED, raised_time_unix_nanos=now, changed_time_unix_nanos=now,
        managed_object_id=host, root_cause_resource_id=host)


class AlarmStore:
    """The active alarms, indexed by id and by host: each event looks up its host's few alarms, never all."""

    def __init__(self) -> None:
        self._alarms: dict[str, Alarm] = {}
        self._by_host: dict[str, dict[str, Alarm]] = {}

    def add(self, alarm: Alarm) -> None:
        self._alarms[alarm.id] = alarm
        self._by_host.setdefault(alarm.host, {})[alarm.id] = alarm

    def replace(self, alarms: list[Alarm]) -> None:
        """Every active alarm at once (a new term loads them from etcd; a follower follows them there)."""
        self._alarms, self._by_host = {}, {}
        for a in alarms:
            self.add(a)

    def get(self, alarm_id: str) -> Alarm | None:
        return self._alarms.get(alarm_id)

    def clear(self, alarm_id: str) -> Alarm | None:
        alarm = self._alarms.pop(alarm_id, None)
        if alarm is not None:
            on_host = self._by_host.get(alarm.host, {})
            on_host.pop(alarm_id, None)
            if not on_host:
                self._by_host.pop(alarm.host, None)
            now = now_ns()
            alarm.fault.state = common_pb2.ALARM_STATE_CLEARED
            alarm.fault.cleared_time_unix_nanos = now
            alarm.fault.changed_time_unix_nanos = now
        return alarm

    def on_host(self, host: str) -> list[Alarm]:
        return list(self._by_host.get(host, {}).values())

    def incident(self, host: str) -> Alarm | None:
        """The host's active fencing incident, if any."""
        on_host = self._by_host.get(host)
        if on_host:  # most hosts have none: the fleet guard asks this of every host at each count
            for a in on_host.values():
                if a.fences:
                    return a
        return None

    def raised_by(self, host: str, component: str) -> Alarm | None:
        """The alarm a component of the host raised, fencing incident or not."""
        return next((a for a in self._by_host.get(host, {}).values() if a.component == component), None)

    def incidents(self) -> list[Alarm]:
        return [a for a in self._alarms.values() if a.fences]

    def by_component(self, host: str, component: str) -> Alarm | None:
        return next((a for a in self._by_host.get(host, {}).values() if a.component == component and not a.fences),
                    None)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._alarms.values()))

    def __len__(self) -> int:
        return len(self._alarms)

    def faults_by_resource(self) -> dict[str, list[common_pb2.Fault]]:
        """Virtual resource id -> the faults of every active alarm that affects it."""
        out: dict[str, list[common_pb2.Fault]] = {}
        for alarm in self._alarms.values():
            if alarm.admin_only:
                continue
            for s in alarm.servers:
                out.setdefault(s.id, []).append(alarm.virtual_fault(s.id))
            for p in alarm.ports:
                out.setdefault(p.id, []).append(alarm.virtual_fault(p.id))
        return out

"""What the leader does about a fault: policy, correlation, fencing, controller updates, notification.

For a fencing rule the recovery runs: look up the host's servers and ports
(cached) while the BMC powers the host off; once the power-off is confirmed,
mark the host down, set its servers to error and its ports' data plane down
concurrently; then publish one notification to the owners and administrators.
A host that cannot be fenced is still reported, with that fact, and nothing
is declared down (DESIGN principle 2). Every stage is stamped on the timeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

from controller_adapter.base import Bmc, Controller, ControllerError, HostStatus, ServerState, Unsupported
from doctor_common.api import common_pb2, diagnostics_pb2, fault_pb2
from doctor_common.timeline import Stage, now_ns, stamp
from inspector.alarms import Alarm, AlarmStore, new_fault
from inspector.correlate import ResourceMap
from inspector.fencing import IpmiFencer
from inspector.policy import Policy, Rule
from notifier.server import Publisher

log = logging.getLogger("doctor.inspector.actions")

HOST_STATUS_PROTO = {
    HostStatus.UP: common_pb2.HOST_STATUS_UP,
    HostStatus.UNKNOWN: common_pb2.HOST_STATUS_UNKNOWN,
    HostStatus.DOWN: common_pb2.HOST_STATUS_DOWN,
    HostStatus.MAINTENANCE: common_pb2.HOST_STATUS_MAINTENANCE,
    HostStatus.NONE: common_pb2.HOST_STATUS_UNSPECIFIED,
}


@dataclass
class Trigger:
    """One fault as the inspector received it."""

    host: str
    fault_type: str
    severity: int
    component: str = ""
    description: str = ""
    details: dict[str, str] = field(default_factory=dict)
    observed_ns: int = 0
    sent_ns: int = 0
    received_ns: int = 0


class Responder:
    def __init__(self, policy: Policy, resources: ResourceMap, controller: Controller, fencer: IpmiFencer,
                 alarms: AlarmStore, publisher: Publisher, bmcs: dict[str, Bmc] | None = None) -> None:
        self.policy = policy
        self.resources = resources
        self.controller = controller
        self.fencer = fencer
        self.alarms = alarms
        self.publisher = publisher
        self.bmcs = bmcs or {}
        self.timelines: deque[diagnostics_pb2.FaultTimeline] = deque(maxlen=200)
        self._locks: dict[str, asyncio.Lock] = {}

    def bmc_for(self, host: str) -> Bmc | None:
        """The inspector's own config wins over what the controller knows."""
        if host in self.bmcs:
            return self.bmcs[host]
        h = self.resources.hosts.get(host)
        return h.bmc if h else None

    def _lock(self, host: str) -> asyncio.Lock:
        return self._locks.setdefault(host, asyncio.Lock())

    # -- entry points ----------------------------------------------------------------------

    async def fault(self, t: Trigger) -> None:
        rule = self.policy.decide(t.host, t.fault_type, t.severity)
        if rule is None:
            log.debug("no rule acts on %s from %s", t.fault_type, t.host)
            return
        async with self._lock(t.host):
            incident = self.alarms.incident(t.host)
            if incident is not None:
                # derived from the root cause being handled: correlated, not notified again
                incident.fault.fault_details[f"correlated.{t.fault_type}"] = t.description or t.component
                incident.fault.changed_time_unix_nanos = now_ns()
                return
            if rule.fences:
                await self._recover(t, rule)
            else:
                await self._notify_only(t, rule)

    async def clear(self, host: str, component: str) -> None:
        """A component is healthy again: clear its (non-fencing) alarm."""
        async with self._lock(host):
            alarm = self.alarms.by_component(host, component)
            if alarm is not None:
                self.alarms.clear(alarm.id)
                await self._publish(alarm, common_pb2.Timeline())

    async def enable_host(self, host: str) -> list[Alarm]:
        """The administrator declares the host repaired: lift forced-down, clear its alarms."""
        async with self._lock(host):
            await self.controller.force_down(host, False)
            self.resources.set_host(host, forced_down=False)
            cleared = []
            for alarm in self.alarms.on_host(host):
                self.alarms.clear(alarm.id)
                cleared.append(alarm)
                await self._publish(alarm, common_pb2.Timeline())
            return cleared

    # -- the two kinds of response ---------------------------------------------------------

    async def _notify_only(self, t: Trigger, rule: Rule) -> None:
        alarm = self.alarms.by_component(t.host, t.component)
        if alarm is not None:
            if alarm.fault.severity == t.severity and alarm.fault.fault_type == t.fault_type:
                return
            alarm.fault.severity, alarm.fault.fault_type = t.severity, t.fault_type
            alarm.fault.state = common_pb2.ALARM_STATE_UPDATED
            alarm.fault.changed_time_unix_nanos = now_ns()
        else:
            fault = new_fault(t.host, t.fault_type, t.severity, t.observed_ns or now_ns(), t.description, t.details)
            admin_only = "notify" not in rule.actions
            alarm = Alarm(t.host, t.component, fault, fences=False, admin_only=admin_only,
                          servers=[] if admin_only else self.resources.servers_on(t.host),
                          ports=[] if admin_only else self.resources.ports_on(t.host))
            self.alarms.add(alarm)
        tl = self._start_timeline(t)
        stamp(tl, Stage.STAGE_CORRELATED)
        await self._publish(alarm, tl)

    async def _recover(self, t: Trigger, rule: Rule) -> None:
        tl = self._start_timeline(t)
        fault = new_fault(t.host, t.fault_type, t.severity, t.observed_ns or now_ns(),
                          t.description or t.fault_type, dict(t.details))
        alarm = Alarm(t.host, t.component, fault, fences=True, timeline=tl)
        self.alarms.add(alarm)  # QueryFaults sees it from now on
        fencing = asyncio.create_task(self.fencer.fence(t.host, self.bmc_for(t.host)))
        alarm.servers = self.resources.servers_on(t.host)
        alarm.ports = self.resources.ports_on(t.host)
        stamp(tl, Stage.STAGE_CORRELATED)
        result = await fencing
        alarm.fenced, alarm.fencing_error = result.ok, result.error
        fault.fault_details["fenced"] = "true" if result.ok else "false"
        if result.ok:
            stamp(tl, Stage.STAGE_FENCED)
            jobs = []
            if "mark_down" in rule.actions:
                jobs.append(self._mark_down(t.host, fault, tl))
            if "reset_servers" in rule.actions and alarm.servers:
                jobs.append(self._servers_error(alarm, tl))
            if "ports_down" in rule.actions and alarm.ports:
                jobs.append(self._ports_down(alarm))
            await asyncio.gather(*jobs)
        else:
            fault.fault_details["fencing_error"] = result.error
            log.error("host %s is faulty but NOT fenced: reported, not marked down (%s)", t.host, result.error)
        await self._publish(alarm, tl)
        self.timelines.appendleft(diagnostics_pb2.FaultTimeline(
            fault_id=fault.fault_id, host_id=t.host, fault_type=t.fault_type, timeline=tl,
            servers=len(alarm.servers), fenced=result.ok))

    @staticmethod
    def _start_timeline(t: Trigger) -> common_pb2.Timeline:
        tl = common_pb2.Timeline()
        for stage, at in ((Stage.STAGE_OBSERVED, t.observed_ns), (Stage.STAGE_SENT, t.sent_ns),
                          (Stage.STAGE_RECEIVED, t.received_ns)):
            if at:
                stamp(tl, stage, at)
        return tl

    async def _mark_down(self, host: str, fault: common_pb2.Fault, tl: common_pb2.Timeline) -> None:
        try:
            await self.controller.force_down(host, True)
            self.resources.set_host(host, forced_down=True)
            stamp(tl, Stage.STAGE_MARKED_DOWN)
        except ControllerError as exc:
            fault.fault_details["mark_down_error"] = str(exc)
            log.error("host %s fenced but could not be marked down: %s", host, exc)

    async def _servers_error(self, alarm: Alarm, tl: common_pb2.Timeline) -> None:
        ids = [s.id for s in alarm.servers]
        try:
            failed = await self.controller.reset_servers_state(ids, ServerState.ERROR)
        except ControllerError as exc:
            failed = {i: exc for i in ids}
        self.resources.set_servers_state([i for i in ids if i not in failed], ServerState.ERROR)
        alarm.servers = self.resources.servers_on(alarm.host) or alarm.servers
        if failed:
            alarm.fault.fault_details["servers_error_failed"] = ",".join(sorted(failed))
            log.error("host %s: %d servers could not be set to error: %s", alarm.host, len(failed),
                      next(iter(failed.values())))
        stamp(tl, Stage.STAGE_SERVERS_UPDATED)

    async def _ports_down(self, alarm: Alarm) -> None:
        ids = [p.id for p in alarm.ports]
        try:
            failed = await self.controller.set_ports_data_plane_status(ids, "DOWN")
        except Unsupported as exc:
            alarm.fault.fault_details["ports_down"] = f"unsupported: {exc}"
            return
        except ControllerError as exc:
            failed = {i: exc for i in ids}
        self.resources.set_ports_status([i for i in ids if i not in failed], "DOWN")
        alarm.ports = self.resources.ports_on(alarm.host) or alarm.ports
        if failed:
            alarm.fault.fault_details["ports_down_failed"] = ",".join(sorted(failed))

    # -- notification ----------------------------------------------------------------------

    def host_status(self, host: str) -> int:
        h = self.resources.hosts.get(host)
        incident = self.alarms.incident(host)
        if incident is not None and not incident.fenced:
            return common_pb2.HOST_STATUS_UNKNOWN  # faulty, not fenced: nobody can say it is up
        return HOST_STATUS_PROTO[h.status] if h else common_pb2.HOST_STATUS_UNSPECIFIED

    def host_state(self, host: str) -> str:
        h = self.resources.hosts.get(host)
        if h is not None and h.forced_down:
            return "down"
        if self.alarms.incident(host) is not None:
            return "error"
        if h is not None and h.disabled:
            return "maintenance"
        return "normal"

    async def _publish(self, alarm: Alarm, tl: common_pb2.Timeline) -> None:
        hs = self.host_status(alarm.host)
        virtual = []
        for s in alarm.servers:
            virtual.append(common_pb2.VirtualResourceInfo(
                virtual_resource_id=s.id, virtual_resource_type="server", project_id=s.project_id,
                virtual_resource_state="error" if s.state == ServerState.ERROR else "normal",
                physical_resource_id=alarm.host, faults=[alarm.virtual_fault(s.id)], host_status=hs))
        for p in alarm.ports:
            virtual.append(common_pb2.VirtualResourceInfo(
                virtual_resource_id=p.id, virtual_resource_type="port", project_id=p.project_id,
                virtual_resource_state="down" if p.data_plane_status == "DOWN" else "normal",
                physical_resource_id=alarm.host, faults=[alarm.virtual_fault(p.id)], host_status=hs))
        physical = common_pb2.PhysicalResourceInfo(
            physical_resource_id=alarm.host, physical_resource_state=self.host_state(alarm.host),
            host_status=hs, faults=[alarm.fault])
        n = fault_pb2.FaultNotification(
            notification_id=f"{alarm.id}.{alarm.fault.changed_time_unix_nanos}",
            event_time_unix_nanos=alarm.fault.event_time_unix_nanos, virtual_resource_info=virtual,
            physical_resource_info=[physical], fenced=alarm.fenced, fencing_error=alarm.fencing_error)
        n.timeline.CopyFrom(tl)
        await self.publisher.publish(n)
        tl.CopyFrom(n.timeline)  # keep the published stamp for Diagnostics

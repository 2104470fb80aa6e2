"""What the leader does about a fault: policy, correlation, fencing, controller updates, notification.

For a fencing rule an incident begins (``inspector/response/recovery.py``):
the owners are told of the suspicion at once, the fleet guard judges it
against the fleet, and only then is the host fenced — or held under a shared
cause, or withdrawn when it is heard again. A host that cannot be fenced is
still reported, with that fact, and nothing is declared down (DESIGN
principle 2). Other rules raise a notify-only alarm. Later faults of a host
with an open incident are recorded as derived from it. Every stage is
stamped on the timeline; each alarm change is persisted with the
notification announcing it (``durable.publish_ops``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from controller_adapter.base import Bmc, Controller, HostStatus, Port, Server, ServerState
from doctor_common.api import common_pb2, diagnostics_pb2, fault_pb2
from doctor_common.audit import Audit
from doctor_common.timeline import Stage, now_ns, stamp
from inspector.ha.etcd_store import Step
from inspector.response.alarms import Alarm, AlarmStore, Phase, new_fault
from inspector.response.correlate import ResourceMap
from inspector.response.durable import NullDurable
from inspector.response.fencing import IpmiFencer
from inspector.response.fleet_guard import FleetGuard, GuardConfig, HostView
from inspector.response.policy import Policy, Rule
from inspector.response.recovery import Recovery, RetryPolicy, servers_to_error
from inspector.response.root_causes import RootCauses
from inspector.response.trigger import SILENCE, Trigger, start_timeline
from notifier.server import Publisher

log = logging.getLogger("doctor.inspector.actions")

HOST_STATUS_PROTO = {
    HostStatus.UP: common_pb2.HOST_STATUS_UP,
    HostStatus.UNKNOWN: common_pb2.HOST_STATUS_UNKNOWN,
    HostStatus.DOWN: common_pb2.HOST_STATUS_DOWN,
    HostStatus.MAINTENANCE: common_pb2.HOST_STATUS_MAINTENANCE,
    HostStatus.NONE: common_pb2.HOST_STATUS_UNSPECIFIED,
}


class Responder:
    def __init__(self, policy: Policy, resources: ResourceMap, controller: Controller, fencer: IpmiFencer,
                 alarms: AlarmStore, publisher: Publisher, bmcs: dict[str, Bmc] | None = None,
                 durable: NullDurable | None = None, guard: FleetGuard | None = None,
                 retry: RetryPolicy = RetryPolicy(), rejoin_s: float = 10.0,
                 spawn: Callable[[Coroutine[Any, Any, None], str], None] | None = None) -> None:
        self.durable = durable or NullDurable()
        self.policy = policy
        self.resources = resources
        self.controller = controller
        self.fencer = fencer
        self.alarms = alarms
        self.publisher = publisher
        self.bmcs = bmcs or {}
        self.audit = Audit()  # the inspector sets its own (its metrics listen to it)
        self.timelines: deque[diagnostics_pb2.FaultTimeline] = deque(maxlen=200)
        self._locks: dict[str, asyncio.Lock] = {}
        self._spawn = spawn or _create_task
        self.guard = guard or FleetGuard(GuardConfig(enabled=False), lambda: self.resources.hosts,
                                         lambda _h: HostView(True, True))
        self.causes = RootCauses(self, self.guard, self._rejudge, rejoin_s,
                                 pending=lambda alarm_id: self.recovery.pending(alarm_id))
        self.recovery = Recovery(self, self.guard, self.causes, retry, rejoin_s)
        # whether the host is in maintenance (empty, being worked on): set by the maintenance workflow
        self.in_maintenance: Callable[[str], bool] = lambda _host: False

    def bmc_for(self, host: str) -> Bmc | None:
        """The inspector's own config wins over what the controller knows."""
        if host in self.bmcs:
            return self.bmcs[host]
        h = self.resources.hosts.get(host)
        return h.bmc if h else None

    def lock(self, host: str) -> asyncio.Lock:
        return self._locks.setdefault(host, asyncio.Lock())

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run a response of its own (under the current term when the inspector wires it so)."""
        self._spawn(coro, what)

    def _rejudge(self, alarm: Alarm, after_s: float = 0.0) -> None:
        if after_s > 0:
            self.recovery.later(alarm, after_s)
        elif not self.recovery.pending(alarm.id):
            self.spawn(self.recovery.decide(alarm), f"judging {alarm.host} again")

    # -- entry points ----------------------------------------------------------------------

    async def fault(self, t: Trigger) -> None:
        rule = self.policy.decide(t.host, t.fault_type, t.severity)
        if rule is None:
            log.debug("no rule acts on %s from %s", t.fault_type, t.host)
            self.audit.fault(t.host, t.component, t.fault_type, "ignored", "no policy rule acts on it")
            return
        if rule.fences and self.in_maintenance(t.host):
            # emptied and being worked on: its symptoms are the work's; nobody on it to protect, nothing to fence
            log.info("%s on %s, which is in maintenance: administrators are told, it is not fenced", t.fault_type,
                     t.host)
            rule = dataclasses.replace(rule, actions=frozenset())
        if rule.fences and self.guard.is_link_fault(t.fault_type):
            incident = self.alarms.incident(t.host)
            if incident is None or incident.withdrawable:  # a fenced host's links say nothing of its switch
                self.guard.link_lost(t.host, t.component)  # counted at once: its switch peers are judged with it
        async with self.lock(t.host):
            incident = self.alarms.incident(t.host)
            if incident is not None:
                self.audit.fault(t.host, t.component, t.fault_type, "correlated", f"incident {incident.id} is open")
                await self._correlate(incident, t, rule)
                return
            if not rule.fences:
                self.audit.fault(t.host, t.component, t.fault_type, "notified",
                                 "" if "notify" in rule.actions else "administrators only")
                await self._notify_only(t, rule)
                return
            self.audit.fault(t.host, t.component, t.fault_type, "suspected", "a fencing rule: judged against the fleet")
            alarm = await self.recovery.suspect(t, rule)
        await self.recovery.decide(alarm)

    async def _correlate(self, incident: Alarm, t: Trigger, rule: Rule) -> None:
        """A fault of a host whose incident is open: new evidence for a suspicion judged again, and recorded as
        derived from the incident (persisted and announced once per fault type), not as an incident of its own."""
        if rule.fences and incident.withdrawable and not self.recovery.pending(incident.id):
            if not t.fault_type == SILENCE:
                incident.silence = False  # the host gave evidence of its own: judged as such from now on
            self._rejudge(incident)
        if (t.fault_type, t.component) == (incident.fault.fault_type, incident.component):
            return
        key = f"correlated.{t.fault_type}"
        if key in incident.fault.fault_details:
            return
        incident.fault.fault_details[key] = t.description or t.component
        incident.touch()
        self.durable.check()
        notice = common_pb2.Timeline()
        notice.CopyFrom(incident.timeline)
        await self.publish(incident, notice)

    async def clear(self, host: str, component: str) -> None:
        """A component is healthy again: clear its alarm, or withdraw its suspicion (nothing done to the host
        yet, or fencing still failing); a fenced host's incident stays until an administrator enables it."""
        self.guard.link_back(host, component)
        async with self.lock(host):
            alarm = self.alarms.raised_by(host, component)
            if alarm is None:
                return
            if alarm.fences:
                if alarm.withdrawable:
                    await self.withdraw(alarm, f"{component} is healthy again")
                return
            self.durable.check()
            self.alarms.clear(alarm.id)
            await self.publish(alarm, common_pb2.Timeline(), cleared=True)

    async def withdraw(self, alarm: Alarm, why: str) -> None:
        """The suspicion was wrong or is over: clear it to the same owners (the caller holds the lock)."""
        self.durable.check()
        self.recovery.forget(alarm.id)
        self.guard.link_back(alarm.host)
        alarm.phase = Phase.INCIDENT_PHASE_WITHDRAWN
        alarm.fault.fault_details["withdrawn"] = why
        self.alarms.clear(alarm.id)
        log.warning("suspicion of %s withdrawn: %s", alarm.host, why)
        await self.publish(alarm, common_pb2.Timeline(), cleared=True)
        await self.durable.close_incident(alarm.id)

    async def enable_host(self, host: str) -> list[Alarm]:
        """The administrator declares the host repaired: lift forced-down, clear its alarms."""
        async with self.lock(host):
            await self.durable.confirm()  # etcd proves we lead (fencing token) before the controller is told
            self.durable.check()
            await self.controller.force_down(host, False)
            self.resources.set_host(host, forced_down=False)
            cleared = []
            for alarm in self.alarms.on_host(host):
                self.recovery.forget(alarm.id)
                if alarm.fences:
                    alarm.phase = Phase.INCIDENT_PHASE_CLOSED
                    self.guard.link_back(host)
                self.alarms.clear(alarm.id)
                cleared.append(alarm)
                await self.publish(alarm, common_pb2.Timeline(), cleared=True)
                if alarm.fences:
                    await self.durable.close_incident(alarm.id)
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
            servers, ports, named = self._affected(t)
            alarm = Alarm(t.host, t.component, fault, fences=False, admin_only=admin_only,
                          servers=[] if admin_only else servers, ports=[] if admin_only else ports)
            self.alarms.add(alarm)
            if "server_error" in rule.actions and named and not admin_only:
                # the owner hears first; the controller's update follows (an update of the same alarm)
                self.spawn(self._server_error(alarm), f"setting {alarm.servers[0].id} to error")
        tl = start_timeline(t)
        stamp(tl, Stage.STAGE_CORRELATED)
        await self.publish(alarm, tl)

    def _affected(self, t: Trigger) -> tuple[list[Server], list[Port], bool]:
        """The servers and ports a fault touches, and whether it named its server: the one server of the VM it
        names (a libvirt domain's uuid or name) when found on the host, else every one on the host."""
        uuid, domain = t.details.get("uuid", ""), t.details.get("domain", "")
        named = self.resources.server_of(t.host, uuid, domain) if uuid or domain else None
        if named is None:
            return self.resources.servers_on(t.host), self.resources.ports_on(t.host), False
        return [named], [p for p in self.resources.ports_on(t.host) if p.device_id == named.id], True

    async def _server_error(self, alarm: Alarm) -> None:
        """The named server's VM is dead: its state to error (nothing else on the host changes), announced as
        an update of the alarm once the controller answered."""
        ids = [s.id for s in alarm.servers]
        self.durable.check()
        failed = await servers_to_error(self.controller, ids)
        async with self.lock(alarm.host):
            if self.alarms.get(alarm.id) is not alarm:
                return  # cleared meanwhile
            self.resources.set_servers_state([i for i in ids if i not in failed], ServerState.ERROR)
            alarm.servers = [self.resources.servers.get(s.id, s) for s in alarm.servers]
            if failed:
                alarm.fault.fault_details["servers_error_failed"] = ",".join(sorted(failed))
                log.error("server %s could not be set to error: %s", ",".join(sorted(failed)),
                          next(iter(failed.values())))
            alarm.touch()
            await self.publish(alarm, common_pb2.Timeline())

    # -- notification ----------------------------------------------------------------------

    def host_status(self, host: str) -> int:
        h = self.resources.hosts.get(host)
        incident = self.alarms.incident(host)
        if incident is not None:
            # fenced: powered off, whatever the controller says yet; else nobody can say it is up
            return common_pb2.HOST_STATUS_DOWN if incident.fenced else common_pb2.HOST_STATUS_UNKNOWN
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

    async def publish(self, alarm: Alarm, tl: common_pb2.Timeline, *, cleared: bool = False,
                      step: Step | None = None, detail: dict[str, Any] | None = None,
                      stage: int = Stage.STAGE_PUBLISHED) -> None:
        """Announce the alarm's state; persist it (and the journal ``step``, if any) with the notification;
        ``stage`` is stamped on the timeline when it is published."""
        ops = self.durable.publish_ops(alarm, cleared=cleared, step=step, detail=detail)
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
            physical_resource_info=[physical], fenced=alarm.fenced, fencing_error=alarm.fencing_error,
            phase=alarm.phase)
        n.timeline.CopyFrom(tl)
        await self.publisher.publish(n, also=ops, stage=stage)
        tl.CopyFrom(n.timeline)  # keep the published stamp for Diagnostics


_TASKS: set[asyncio.Task[None]] = set()


def _create_task(coro: Coroutine[Any, Any, None], what: str) -> None:
    """The default spawn (tests, tools): a task kept alive until done, its failure logged."""
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)

    def done(t: asyncio.Task[None]) -> None:
        _TASKS.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("%s failed", what, exc_info=t.exception())
    task.add_done_callback(done)

"""A fencing incident step by step, each step journalled once it has run (DESIGN principles 2, 3 and 5).

    fence ‖ correlate → confirm off → mark down ‖ servers to error (+ ports down) → notify

The journal (``inspector/response/durable.py``: etcd when replicated, nothing when
standalone) records a step only after it ran to its outcome — done, not
applicable, or failed and reported in the notification — never before. A
leader that dies leaves the rest pending and the next one ``resume``s the
incident there. A step done but not yet recorded is done again, which every
step tolerates: an off host is "already off" (no second power-off), forcing a
host down twice is harmless. The notify step is recorded in the same etcd
transaction that appends the notification, so it happens exactly once.
Before each external action the term is checked (``durable.check()``), and
the whole response runs under ``Term.run``, which cancels it the moment the
term is lost. A new incident's first act is a fenced etcd write (opening its
journal): a leader that was frozen and deposed meanwhile is refused by etcd
before it can send a power-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Collection
from typing import Any, Protocol

from controller_adapter.base import Bmc, Controller, ControllerError, ServerState, Unsupported
from doctor_common.api import common_pb2, diagnostics_pb2
from doctor_common.timeline import Stage, as_dict, now_ns, stamp
from inspector.ha.etcd_store import Incident, Step
from inspector.response import crashpoint
from inspector.response.alarms import Alarm, AlarmStore, new_fault
from inspector.response.correlate import ResourceMap
from inspector.response.durable import NullDurable
from inspector.response.fencing import IpmiFencer
from inspector.response.policy import FENCE_ALL, Rule
from inspector.response.trigger import Trigger, start_timeline

log = logging.getLogger("doctor.inspector.recovery")


class Responding(Protocol):
    """What a recovery uses of the responder that runs it (``inspector/response/responder.py``)."""

    durable: NullDurable
    resources: ResourceMap
    controller: Controller
    fencer: IpmiFencer
    alarms: AlarmStore
    timelines: deque[diagnostics_pb2.FaultTimeline]

    def bmc_for(self, host: str) -> Bmc | None: ...

    def lock(self, host: str) -> asyncio.Lock: ...

    async def publish(self, alarm: Alarm, tl: common_pb2.Timeline, *, cleared: bool = False,
                      step: Step | None = None, detail: dict[str, Any] | None = None) -> None: ...


class Recovery:
    def __init__(self, responder: Responding) -> None:
        self.r = responder

    async def start(self, t: Trigger, rule: Rule) -> None:
        """A new incident: journal it (with its alarm), then run every step."""
        r = self.r
        tl = start_timeline(t)
        fault = new_fault(t.host, t.fault_type, t.severity, t.observed_ns or now_ns(),
                          t.description or t.fault_type, dict(t.details))
        alarm = Alarm(t.host, t.component, fault, fences=True, timeline=tl,
                      servers=r.resources.servers_on(t.host), ports=r.resources.ports_on(t.host))
        stamp(tl, Stage.STAGE_CORRELATED)
        r.alarms.add(alarm)  # QueryFaults sees it from now on
        await r.durable.open_incident(alarm, rule.actions)
        await self.run(alarm, rule.actions, {})

    async def resume(self, incident: Incident) -> None:
        """Finish an incident a previous leader began (its recorded steps are not run again)."""
        r = self.r
        alarm = r.alarms.get(str(incident.data.get("alarm_id", incident.incident_id)))
        if alarm is None:  # written in one transaction with the incident: only a hand-edited etcd gets here
            log.error("incident %s has no alarm record; closing it", incident.incident_id)
            await r.durable.close_incident(incident.incident_id)
            return
        done = {s.step: s.detail for s in incident.steps}
        log.warning("finishing incident %s on %s begun by %s: %s", incident.incident_id, alarm.host,
                    ", ".join(sorted({s.node_id for s in incident.steps})) or "a previous leader",
                    (", ".join(incident.pending()) + " still to do") if incident.pending() else "only closing it")
        async with r.lock(alarm.host):
            await self.run(alarm, incident.data.get("actions") or sorted(FENCE_ALL), done)

    async def run(self, alarm: Alarm, actions: Collection[str], done: dict[str, dict[str, Any]]) -> None:
        r, d, host, tl = self.r, self.r.durable, alarm.host, alarm.timeline
        bmc = r.bmc_for(host)
        fence = done.get(Step.FENCE)
        if fence is None:
            d.check()
            crashpoint.reached("before_fence")
            res = await r.fencer.power_off(host, bmc)
            fence = {"ok": res.ok, "already_off": res.already_off, "error": res.error}
            await d.step(alarm.id, Step.FENCE, fence)
        confirm = done.get(Step.CONFIRM_OFF)
        if confirm is None:
            if fence.get("ok"):
                d.check()
                res = await r.fencer.confirm_off(host, bmc)
                confirm = {"ok": res.ok, "error": res.error}
            else:
                confirm = {"ok": False, "skipped": "the power-off was not sent"}
            await d.step(alarm.id, Step.CONFIRM_OFF, confirm)
        fenced = bool(fence.get("ok") and confirm.get("ok"))
        alarm.fenced = fenced
        alarm.fencing_error = "" if fenced else str(confirm.get("error") or fence.get("error") or "")
        alarm.fault.fault_details["fenced"] = "true" if fenced else "false"
        if fenced:
            if Stage.STAGE_FENCED not in as_dict(tl):
                stamp(tl, Stage.STAGE_FENCED)
        else:
            alarm.fault.fault_details["fencing_error"] = alarm.fencing_error
            log.error("host %s is faulty but NOT fenced: reported, not marked down (%s)", host, alarm.fencing_error)
        crashpoint.reached("after_fence")
        jobs = []
        if Step.MARK_DOWN not in done:
            jobs.append(self._mark_down(alarm, actions, fenced))
        if Step.SERVERS_ERROR not in done:
            jobs.append(self._virtual_resources(alarm, actions, fenced))
        await asyncio.gather(*jobs)
        crashpoint.reached("after_mark_down")
        if Step.NOTIFY not in done:
            await r.publish(alarm, tl, step=Step.NOTIFY)
        await d.close_incident(alarm.id)
        r.timelines.appendleft(diagnostics_pb2.FaultTimeline(
            fault_id=alarm.id, host_id=host, fault_type=alarm.fault.fault_type, timeline=tl,
            servers=len(alarm.servers), fenced=fenced))

    async def _mark_down(self, alarm: Alarm, actions: Collection[str], fenced: bool) -> None:
        r, host = self.r, alarm.host
        detail: dict[str, Any]
        if not fenced or "mark_down" not in actions:
            detail = {"skipped": "not fenced" if not fenced else "not in the rule"}
        else:
            r.durable.check()
            try:
                await r.controller.force_down(host, True)
                r.resources.set_host(host, forced_down=True)
                stamp(alarm.timeline, Stage.STAGE_MARKED_DOWN)
                detail = {"ok": True}
            except ControllerError as exc:
                alarm.fault.fault_details["mark_down_error"] = str(exc)
                log.error("host %s fenced but could not be marked down: %s", host, exc)
                detail = {"ok": False, "error": str(exc)}
        await r.durable.step(alarm.id, Step.MARK_DOWN, detail)

    async def _virtual_resources(self, alarm: Alarm, actions: Collection[str], fenced: bool) -> None:
        """Servers to error and ports' data plane down, journalled together as the servers_error step."""
        r = self.r
        alarm.servers = r.resources.servers_on(alarm.host) or alarm.servers
        alarm.ports = r.resources.ports_on(alarm.host) or alarm.ports
        jobs = []
        if fenced and "reset_servers" in actions and alarm.servers:
            jobs.append(self._servers_error(alarm))
        if fenced and "ports_down" in actions and alarm.ports:
            jobs.append(self._ports_down(alarm))
        await asyncio.gather(*jobs)
        await r.durable.step(alarm.id, Step.SERVERS_ERROR,
                             {"servers": len(alarm.servers), "ports": len(alarm.ports), "done": len(jobs)})

    async def _servers_error(self, alarm: Alarm) -> None:
        r = self.r
        ids = [s.id for s in alarm.servers]
        r.durable.check()
        try:
            failed = await r.controller.reset_servers_state(ids, ServerState.ERROR)
        except ControllerError as exc:
            failed = {i: exc for i in ids}
        r.resources.set_servers_state([i for i in ids if i not in failed], ServerState.ERROR)
        alarm.servers = r.resources.servers_on(alarm.host) or alarm.servers
        if failed:
            alarm.fault.fault_details["servers_error_failed"] = ",".join(sorted(failed))
            log.error("host %s: %d servers could not be set to error: %s", alarm.host, len(failed),
                      next(iter(failed.values())))
        stamp(alarm.timeline, Stage.STAGE_SERVERS_UPDATED)

    async def _ports_down(self, alarm: Alarm) -> None:
        r = self.r
        ids = [p.id for p in alarm.ports]
        r.durable.check()
        try:
            failed = await r.controller.set_ports_data_plane_status(ids, "DOWN")
        except Unsupported as exc:
            alarm.fault.fault_details["ports_down"] = f"unsupported: {exc}"
            return
        except ControllerError as exc:
            failed = {i: exc for i in ids}
        r.resources.set_ports_status([i for i in ids if i not in failed], "DOWN")
        alarm.ports = r.resources.ports_on(alarm.host) or alarm.ports
        if failed:
            alarm.fault.fault_details["ports_down_failed"] = ",".join(sorted(failed))

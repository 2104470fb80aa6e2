"""A fencing incident, from the first suspicion to the controller's last update (DESIGN principles 2, 3, 5, 9, 10).

    suspect: alarm, journal opened, owners told at once (host status UNKNOWN)
      └─ settle, then the fleet guard judges (``response/fleet_guard.py``):
           FENCE    → power off ‖ confirm → fenced notice ‖ mark down ‖ servers error, ports down → final notice
           HOLD     → a shared cause (switch, zone, the inspector itself) explains it: held notice, nothing
                      fenced; judged again when the cause clears (``response/root_causes.py``)
           WAIT     → the zone's fencing budget is spent: judged again when a fence is due
           WITHDRAW → the host is heard again: the suspicion is cleared to the same owners
    a failed fence → unfenced notice, retried with backoff (``RetryPolicy``) until the power-off is confirmed,
    the host is heard again (withdrawn), or an administrator enables the host (cleared)

The journal (``response/durable.py``: etcd when replicated, nothing when
standalone) records a step only after it ran to its outcome, never before; a
failed fence is not recorded, so the next leader judges and fences again. A
leader that dies leaves the rest pending and the next one ``resume``s the
incident: from the confirmation on if the power-off was sent, else by judging
it afresh (a silent host is re-detected by liveness, a reported fault judged
at once). A step done but not yet recorded is done again, which every step
tolerates: an off host is "already off", forcing a host down twice is
harmless. Each notice is recorded in the same etcd transaction that appends
it, so it is announced exactly once. The incident is opened in a transaction
before its suspicion's: one opened whose suspicion never reached the log (the
term ended in between) is announced before anything else is done about it,
by this leader or the next. Before each external action the term is
checked (``durable.check()``), and every response runs under ``Term.run``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from controller_adapter.base import Bmc, Controller, ControllerError, ServerState, Unsupported
from doctor_common.api import common_pb2, diagnostics_pb2
from doctor_common.audit import Audit
from doctor_common.etcd_guard import NotLeader
from doctor_common.timeline import Stage, as_dict, now_ns, stage_durations, stage_name, stamp
from inspector.ha.etcd_store import Incident, Step
from inspector.response import crashpoint
from inspector.response.alarms import Alarm, AlarmStore, Phase, new_fault
from inspector.response.correlate import ResourceMap
from inspector.response.durable import NullDurable
from inspector.response.fencing import IpmiFencer
from inspector.response.fleet_guard import FleetGuard, Judgement, Verdict
from inspector.response.policy import FENCE_ALL, Policy, Rule
from inspector.response.trigger import POWER_OFF, SILENCE, Trigger, start_timeline

log = logging.getLogger("doctor.inspector.recovery")

SWITCH_DOWN = "network.switch.down"  # the switch's own fault type: a policy rule for it may fence its hosts


@dataclass(frozen=True)
class RetryPolicy:
    """A failed fence is tried again after ``first_s``, doubling up to ``max_s``, for as long as it fails."""

    first_s: float = 1.0
    max_s: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.first_s * 2 ** max(0, failures - 1))


class Responding(Protocol):
    """What a recovery uses of the responder that runs it (``inspector/response/responder.py``)."""

    durable: NullDurable
    policy: Policy
    resources: ResourceMap
    controller: Controller
    fencer: IpmiFencer
    alarms: AlarmStore
    timelines: deque[diagnostics_pb2.FaultTimeline]
    audit: Audit
    in_maintenance: Callable[[str], bool]

    def bmc_for(self, host: str) -> Bmc | None: ...

    def lock(self, host: str) -> asyncio.Lock: ...

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None: ...

    async def publish(self, alarm: Alarm, tl: common_pb2.Timeline, *, cleared: bool = False,
                      step: Step | None = None, detail: dict[str, Any] | None = None,
                      stage: int = Stage.STAGE_PUBLISHED) -> None: ...

    async def withdraw(self, alarm: Alarm, why: str) -> None: ...


class Holding(Protocol):
    """Where a held suspicion goes (``response/root_causes.py``)."""

    async def hold(self, alarm: Alarm, judgement: Judgement) -> None: ...


async def servers_to_error(controller: Controller, ids: list[str]) -> dict[str, ControllerError]:
    """The servers the controller could not set to error; a failure of the whole call counts against each."""
    try:
        return await controller.reset_servers_state(ids, ServerState.ERROR)
    except ControllerError as exc:
        return {i: exc for i in ids}


class Recovery:
    def __init__(self, responder: Responding, guard: FleetGuard, causes: Holding,
                 retry: RetryPolicy = RetryPolicy(), rejoin_s: float = 10.0) -> None:
        self.r = responder
        self.guard = guard
        self.causes = causes
        self.retry = retry
        self.rejoin_s = rejoin_s  # a silent host's time to come back before it is judged again
        self._deciding: set[str] = set()                   # alarm ids being judged now
        self._timers: dict[str, asyncio.TimerHandle] = {}  # alarm id -> its next judgement (wait, retry)
        self._failures: dict[str, int] = {}                # alarm id -> failed attempts in a row
        self._granted: set[str] = set()                    # alarm ids judged fit to fence: a budget token spent
        # alarm ids whose suspicion is not in the log yet (its append failed, or the term ended between the
        # incident's opening and its notice): announced before anything else is done about them
        self._unannounced: set[str] = set()
        # of those, the ones whose notice was sent and raised (past etcd's deadline, say): it may have been
        # applied, so the journal is read before announcing again — a second SUSPECTED would be a lie too
        self._tried: set[str] = set()

    # -- state for the responder and Diagnostics -------------------------------------------------

    def pending(self, alarm_id: str) -> bool:
        """A judgement of this incident is under way or scheduled."""
        return alarm_id in self._deciding or alarm_id in self._timers

    def waiting(self) -> int:
        return len(self._timers)

    def cancel_all(self) -> None:
        """This replica stops acting: forget every scheduled judgement (the next leader resumes them)."""
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._failures.clear()
        self._granted.clear()
        self._unannounced.clear()
        self._tried.clear()

    def forget(self, alarm_id: str) -> None:
        self.forget_timer(alarm_id)
        self._failures.pop(alarm_id, None)
        self._granted.discard(alarm_id)
        self._unannounced.discard(alarm_id)
        self._tried.discard(alarm_id)

    # -- a new incident ----------------------------------------------------------------------------

    async def suspect(self, t: Trigger, rule: Rule) -> Alarm:
        """A new incident (the caller holds the host's lock): journal it with its alarm, tell the owners."""
        r = self.r
        tl = start_timeline(t)
        fault = new_fault(t.host, t.fault_type, t.severity, t.observed_ns or now_ns(),
                          t.description or t.fault_type, dict(t.details))
        alarm = Alarm(t.host, t.component, fault, fences=True, timeline=tl,
                      servers=r.resources.servers_on(t.host), ports=r.resources.ports_on(t.host),
                      phase=Phase.INCIDENT_PHASE_SUSPECTED, silence=t.fault_type == SILENCE,
                      actions=tuple(sorted(rule.actions)))
        stamp(tl, Stage.STAGE_CORRELATED)
        self._deciding.add(alarm.id)  # the caller judges it next: the safety net must not judge it meanwhile
        self._unannounced.add(alarm.id)
        try:
            r.alarms.add(alarm)  # QueryFaults sees it from now on
            await self._announce(alarm)
        except BaseException:
            self._deciding.discard(alarm.id)  # the sweep judges it, announcing it first (or a new leader resumes it)
            raise
        return alarm

    async def _announce(self, alarm: Alarm) -> None:
        """Journal the incident and tell the owners of the suspicion, unless they were told (the caller holds
        the host's lock). The opening and the notice are two transactions: an incident judged with its notice
        missing would be fenced and announced FENCED with no SUSPECTED in the log."""
        if alarm.id not in self._unannounced:
            return
        if alarm.id in self._tried and await self._announced_after_all(alarm):
            log.info("the suspicion of %s was announced after all (its append raised, but was applied)", alarm.host)
        else:
            await self.r.durable.open_incident(alarm, alarm.actions)  # create-if-absent: a no-op when it is open
            self._tried.add(alarm.id)
            await self.r.publish(alarm, alarm.timeline, step=Step.NOTIFY_SUSPECTED,
                                 stage=Stage.STAGE_SUSPECT_PUBLISHED)
        self._unannounced.discard(alarm.id)
        self._tried.discard(alarm.id)

    async def _announced_after_all(self, alarm: Alarm) -> bool:
        """Was the notice whose append raised applied? Then it is in the log, and the publisher offers it live
        (read back from the log) before this answers: announcing again would tell the owners twice."""
        await self.r.publisher.catch_up()
        return await self.r.durable.recorded(alarm.id, Step.NOTIFY_SUSPECTED)

    async def decide(self, alarm: Alarm, *, settle: bool = True) -> None:
        """Judge the suspicion against the fleet and act on the verdict. Runs as its own task: the settle
        wait (for faults that share a cause to arrive) holds no lock. Whatever fails on the way (etcd past its
        write deadline, a controller error) is tried again with backoff: an incident is never left stuck."""
        r = self.r
        self.forget_timer(alarm.id)
        self._deciding.add(alarm.id)
        try:
            wait = self.guard.settle_for(alarm.host, alarm.silence) if settle else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            async with r.lock(alarm.host):
                if r.alarms.get(alarm.id) is not alarm or not alarm.withdrawable:
                    return  # withdrawn, enabled or fenced meanwhile
                r.durable.check()
                await self._announce(alarm)
                await self._judge(alarm)
        except (NotLeader, asyncio.CancelledError):
            raise
        except Exception:  # noqa: BLE001 - see the docstring
            n = self._failures[alarm.id] = self._failures.get(alarm.id, 0) + 1
            delay = self.retry.delay(n)
            log.exception("incident %s on %s: judging or fencing failed; again in %.1fs", alarm.id, alarm.host, delay)
            if r.alarms.get(alarm.id) is alarm:
                self._later(alarm, delay)
        finally:
            self._deciding.discard(alarm.id)

    async def _judge(self, alarm: Alarm) -> None:
        if self.r.in_maintenance(alarm.host):
            # emptied and being worked on (a suspicion from before, judged again): never powered off for it
            await self.r.withdraw(alarm, "the host is in maintenance: being worked on, nobody on it to protect")
            return
        retry = alarm.id in self._granted  # judged fit before (its fence failed): no second token
        j = self.guard.judge(alarm.host, silence=alarm.silence, fence_shared=self._fences_shared(), retry=retry)
        self.r.audit.judged(alarm.host, alarm.fault.fault_type, j.verdict.name.lower(), j.reason)
        if j.verdict is Verdict.WITHDRAW:
            await self.r.withdraw(alarm, j.reason)
        elif j.verdict is Verdict.HOLD:
            log.warning("not fencing %s for %s: %s", alarm.host, alarm.fault.fault_type, j.reason)
            await self.causes.hold(alarm, j)
        elif j.verdict is Verdict.WAIT:
            alarm.fault.fault_details["guard"] = j.reason
            log.warning("fencing %s later: %s", alarm.host, j.reason)
            self._later(alarm, j.retry_at - time.monotonic())
        else:
            self._granted.add(alarm.id)
            alarm.fault.fault_details.pop("guard", None)
            alarm.held_by = ""
            await self.run(alarm, alarm.actions or sorted(FENCE_ALL), {})

    def _fences_shared(self) -> bool:
        rule = self.r.policy.match(SWITCH_DOWN, common_pb2.SEVERITY_CRITICAL)
        return rule is not None and rule.fences

    def later(self, alarm: Alarm, delay: float) -> None:
        """Judge the suspicion again in ``delay`` seconds (unless something judges it first)."""
        self._later(alarm, delay)

    def _later(self, alarm: Alarm, delay: float) -> None:
        self.forget_timer(alarm.id)
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._timers.pop(alarm.id, None)
            self.r.spawn(self.decide(alarm, settle=False), f"judging {alarm.host} again")
        self._timers[alarm.id] = loop.call_later(max(0.0, delay), due)

    def forget_timer(self, alarm_id: str) -> None:
        timer = self._timers.pop(alarm_id, None)
        if timer is not None:
            timer.cancel()

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
        if Step.FENCE not in done:
            # nothing was sent to the BMC: this leader judges the suspicion afresh
            if alarm.phase not in (Phase.INCIDENT_PHASE_HELD, Phase.INCIDENT_PHASE_UNFENCED):
                alarm.phase = Phase.INCIDENT_PHASE_SUSPECTED
                if Step.NOTIFY_SUSPECTED not in done:
                    # opened, then the term ended before its notice was appended (a held or unfenced alarm
                    # record was written with a notice of its own: its owners were told)
                    self._unannounced.add(alarm.id)
            if self.guard.is_link_fault(alarm.fault.fault_type):
                self.guard.link_lost(alarm.host, alarm.component)
            if alarm.silence or self.guard.settle_for(alarm.host, False) > 0:
                # its agent, or its switch peers' agents, may still be reconnecting to this leader: what they
                # say (or do not) decides; judged once the takeover grace is over
                self.later(alarm, self.rejoin_s)
            else:
                r.spawn(self.decide(alarm), f"judging {alarm.host} again after the takeover")
            if alarm.id in self._unannounced:
                async with r.lock(alarm.host):  # the owners hear at once, not when it is judged
                    if r.alarms.get(alarm.id) is alarm and alarm.withdrawable:
                        await self._announce(alarm)
            return
        async with r.lock(alarm.host):
            await self.run(alarm, incident.data.get("actions") or sorted(FENCE_ALL), done)

    # -- fencing and the controller ---------------------------------------------------------------

    async def run(self, alarm: Alarm, actions: Collection[str], done: dict[str, dict[str, Any]]) -> None:
        """Fence (unless journalled done), then tell owners and the controller (the caller holds the lock)."""
        r, d, host, tl = self.r, self.r.durable, alarm.host, alarm.timeline
        bmc = r.bmc_for(host)
        if alarm.fault.fault_type == POWER_OFF and Step.FENCE not in done:
            # the evidence was the BMC saying off: confirmed, never sent. On again, the suspicion was wrong.
            if await self._powered_on(alarm, bmc):
                return
        if Step.CONFIRM_OFF not in done:
            alarm.fencing = True
            try:
                deadline = time.monotonic() + r.fencer.timeout_s  # one bound for the whole attempt
                sent: dict[str, Any] | None = None
                already_off = False
                r.audit.fence_attempt(host, self._failures.get(alarm.id, 0) + 1)
                if Step.FENCE not in done:
                    d.check()
                    crashpoint.reached("before_fence")
                    res = await r.fencer.power_off(host, bmc, deadline=deadline)
                    if not res.ok:
                        await self._failed(alarm, res.error)
                        return
                    sent = {"ok": True, "already_off": res.already_off}
                    already_off = res.already_off
                d.check()
                # confirmed first, journalled after: a write between the two wakes a thread that makes pyghmi's
                # reply race (and its retransmit wait) likelier; a leader that dies in between finds no fence
                # recorded and fences again, which finds the host already off
                res = await r.fencer.confirm_off(host, bmc, deadline=deadline)
                if not res.ok:
                    await self._failed(alarm, res.error)
                    return
                r.audit.fence_result(host, "already_off" if already_off else "ok")
                if sent is not None:
                    await d.step(alarm.id, Step.FENCE, sent)
                await d.step(alarm.id, Step.CONFIRM_OFF, {"ok": True})
            finally:
                alarm.fencing = False
        self._failures.pop(alarm.id, None)
        self.guard.forget(host)
        alarm.fenced, alarm.fencing_error = True, ""
        alarm.phase = Phase.INCIDENT_PHASE_FENCED
        alarm.touch()
        alarm.fault.fault_details["fenced"] = "true"
        alarm.fault.fault_details.pop("fencing_error", None)
        if Stage.STAGE_FENCED not in as_dict(tl):
            stamp(tl, Stage.STAGE_FENCED)
        crashpoint.reached("after_fence")
        # the owners hear of the power-off first: published, and their streams given the loop to write it,
        # before the controller's calls start (dozens of them through openstacksdk compete for the GIL)
        if Step.NOTIFY_FENCED not in done:
            await r.publish(alarm, tl, step=Step.NOTIFY_FENCED, stage=Stage.STAGE_FENCE_PUBLISHED)
            for _ in range(3):
                await asyncio.sleep(0)
        jobs = []
        if Step.MARK_DOWN not in done:
            jobs.append(self._mark_down(alarm, actions))
        if Step.SERVERS_ERROR not in done:
            jobs.append(self._virtual_resources(alarm, actions))
        await asyncio.gather(*jobs)
        crashpoint.reached("after_mark_down")
        if "mark_down_error" not in alarm.fault.fault_details:
            alarm.phase = Phase.INCIDENT_PHASE_MARKED_DOWN
        alarm.touch()
        if Step.NOTIFY not in done:
            await r.publish(alarm, tl, step=Step.NOTIFY)
        await d.close_incident(alarm.id)
        r.timelines.appendleft(diagnostics_pb2.FaultTimeline(
            fault_id=alarm.id, host_id=host, fault_type=alarm.fault.fault_type, timeline=tl,
            servers=len(alarm.servers), fenced=True))
        r.audit.profiled(alarm.fault.fault_type, [(stage_name(st), ms) for st, ms in stage_durations(tl)])

    async def _powered_on(self, alarm: Alarm, bmc: Bmc | None) -> bool:
        """For power-off evidence: True (and withdrawn) when the BMC now says on, or failed when it cannot say."""
        try:
            if bmc is None:
                raise RuntimeError(f"no BMC is configured for host {alarm.host}")
            state = await self.r.fencer.power_state(bmc, self.r.fencer.timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported and retried like a failed fence
            await self._failed(alarm, f"BMC did not say whether {alarm.host} is off: {exc or type(exc).__name__}")
            return True
        if state == "on":
            await self.r.withdraw(alarm, "the BMC says the host is powered on again")
            return True
        return False

    async def _failed(self, alarm: Alarm, error: str) -> None:
        """The fence failed: tell the owners (once per distinct error) and try again later."""
        n = self._failures[alarm.id] = self._failures.get(alarm.id, 0) + 1
        delay = self.retry.delay(n)
        changed = alarm.fencing_error != error or alarm.phase != Phase.INCIDENT_PHASE_UNFENCED
        alarm.fenced, alarm.fencing_error = False, error
        alarm.phase = Phase.INCIDENT_PHASE_UNFENCED
        details = alarm.fault.fault_details
        details["fenced"], details["fencing_error"] = "false", error
        details["fence_attempts"] = str(n)
        alarm.touch()
        log.error("host %s is faulty but NOT fenced (attempt %d; again in %.1fs): reported, not marked down: %s",
                  alarm.host, n, delay, error)
        self.r.audit.fence_result(alarm.host, "failed", error)
        if changed:
            notice = common_pb2.Timeline()
            notice.CopyFrom(alarm.timeline)
            await self.r.publish(alarm, notice)
        self._later(alarm, delay)

    async def _mark_down(self, alarm: Alarm, actions: Collection[str]) -> None:
        r, host = self.r, alarm.host
        detail: dict[str, Any]
        if "mark_down" not in actions:
            detail = {"skipped": "not in the rule"}
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

    async def _virtual_resources(self, alarm: Alarm, actions: Collection[str]) -> None:
        """Servers to error and ports' data plane down, journalled together as the servers_error step."""
        r = self.r
        alarm.servers = r.resources.servers_on(alarm.host) or alarm.servers
        alarm.ports = r.resources.ports_on(alarm.host) or alarm.ports
        jobs = []
        if "reset_servers" in actions and alarm.servers:
            jobs.append(self._servers_error(alarm))
        if "ports_down" in actions and alarm.ports:
            jobs.append(self._ports_down(alarm))
        await asyncio.gather(*jobs)
        await r.durable.step(alarm.id, Step.SERVERS_ERROR,
                             {"servers": len(alarm.servers), "ports": len(alarm.ports), "done": len(jobs)})

    async def _servers_error(self, alarm: Alarm) -> None:
        r = self.r
        ids = [s.id for s in alarm.servers]
        r.durable.check()
        failed = await servers_to_error(r.controller, ids)
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



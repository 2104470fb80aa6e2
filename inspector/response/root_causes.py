"""Shared causes as alarms of their own: one root-cause alarm per switch, zone or isolated inspector.

When the fleet guard holds a suspicion (``response/fleet_guard.py``), the
cause gets one critical, administrators-only alarm on its physical resource
(the switch, the zone, or "inspector"), listing the host incidents it
explains in ``correlated_fault_ids``; each held incident names it back, is no
longer a root cause, and its owners hear it is held (host status UNKNOWN, not
fenced). A switch its monitor reported down is an alarm before any host is
held. The cause's alarm is announced when raised, then updated at most once
per sweep (a mass event adds thousands of hosts to it).

``watch`` sweeps every ``tick_s``. A cause that no longer holds is cleared
and every host it held is judged again: a silent host after a grace
(``rejoin_s``) for its agent to reconnect — withdrawn if it did, fenced if it
is still alone in its silence; a host with reported evidence at once (after
the settle wait, in which a recovering link clears). The sweep also judges
again any suspicion left without a judgement pending (a safety net: nothing
stays suspected for good). For ``rejoin_s`` after a takeover nothing is
released: the agents are still coming back to the new leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from doctor_common.api import common_pb2
from doctor_common.etcd_guard import NotLeader
from doctor_common.timeline import now_ns
from inspector.ha.etcd_store import Step
from inspector.response.alarms import Alarm, AlarmStore, Phase, new_fault
from inspector.response.fleet_guard import Cause, FleetGuard, Judgement

log = logging.getLogger("doctor.inspector.root_causes")

FAULT_TYPES = {"switch": "network.switch.down", "zone": "network.zone.partitioned",
               "inspector": "doctor.inspector.isolated"}
PREFIX = "cause:"
LISTED = 20  # hosts named in a cause's details; the rest are counted


class Publishing(Protocol):
    alarms: AlarmStore

    async def publish(self, alarm: Alarm, tl: common_pb2.Timeline, *, cleared: bool = False,
                      step: Step | None = None, detail: dict[str, Any] | None = None,
                      stage: int = ...) -> None: ...


class RootCauses:
    def __init__(self, responder: Publishing, guard: FleetGuard, rejudge: Callable[[Alarm, float], None],
                 rejoin_s: float, pending: Callable[[str], bool] = lambda _id: False, tick_s: float = 0.5) -> None:
        self.r = responder
        self.guard = guard
        self.rejudge = rejudge      # judge an incident again, after a delay (s)
        self.rejoin_s = rejoin_s    # how long a silent host has to come back once its cause cleared
        self.pending = pending      # a judgement of the incident is under way or scheduled
        self.tick_s = tick_s
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()  # causes whose alarm changed since it was last announced
        self._quiet_until = 0.0        # monotonic: no release before (a takeover's grace)

    def roots(self) -> dict[str, Alarm]:
        """The open root-cause alarms by cause key (they live in the alarm store, so a new leader has them)."""
        return {a.component.removeprefix(PREFIX): a for a in self.r.alarms if a.component.startswith(PREFIX)}

    def held(self, key: str | None = None) -> list[Alarm]:
        return [a for a in self.r.alarms.incidents()
                if a.phase == Phase.INCIDENT_PHASE_HELD and (key is None or a.held_by == key)]

    def took_over(self) -> None:
        """A new term with the previous leader's alarms: restore the switches reported down, and release
        nothing until the agents had their grace to come back."""
        self._dirty.clear()
        roots = self.roots()
        self._quiet_until = time.monotonic() + self.rejoin_s if roots else 0.0  # nothing carried: nothing to keep
        for key, root in roots.items():
            reported = root.fault.fault_details.get("reported")
            if key.startswith("switch:") and reported:
                self.guard.switch_reported(key.split(":", 1)[1], True, reported)

    async def hold(self, alarm: Alarm, judgement: Judgement) -> None:
        """Hold the incident under its cause's alarm (raised now, or updated with the next sweep)."""
        cause = next((c for c in self.guard.causes() if c.key == judgement.cause), None)
        root = await self._root(judgement.cause, cause, judgement.reason)
        if alarm.id not in root.fault.correlated_fault_ids:
            root.fault.correlated_fault_ids.append(alarm.id)
            self._dirty.add(judgement.cause)
        alarm.phase, alarm.held_by = Phase.INCIDENT_PHASE_HELD, judgement.cause
        f = alarm.fault
        f.is_root_cause = False
        f.root_cause_resource_id = root.host
        del f.correlated_fault_ids[:]
        f.correlated_fault_ids.append(root.id)
        f.fault_details["held"] = judgement.reason
        alarm.touch()
        notice = common_pb2.Timeline()
        notice.CopyFrom(alarm.timeline)
        await self.r.publish(alarm, notice)

    async def _root(self, key: str, cause: Cause | None, reason: str) -> Alarm:
        """The cause's alarm; raised (and announced at once) if it is new."""
        async with self._lock:
            root = self.roots().get(key)
            if root is not None:
                if root.fault.probable_cause != reason:
                    root.fault.probable_cause = reason
                    self._dirty.add(key)
                return root
            kind = cause.kind if cause else key.split(":")[0]
            resource = cause.resource if cause else key.split(":", 1)[-1]
            details = {"cause": key}
            if cause is not None and cause.reported:
                details["reported"] = cause.reported  # a new leader restores the monitor's word from here
            fault = new_fault(resource, FAULT_TYPES.get(kind, "doctor.shared.cause"), common_pb2.SEVERITY_CRITICAL,
                              now_ns(), reason, details)
            root = Alarm(resource, PREFIX + key, fault, fences=False, admin_only=True)
            self.r.alarms.add(root)
            log.critical("shared cause %s: %s; holding every fence it explains", key, reason)
            await self.r.publish(root, common_pb2.Timeline())
            return root

    async def watch(self) -> None:
        """Sweep until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.sweep()
            except NotLeader:
                raise
            except Exception:  # noqa: BLE001 - one bad sweep must not end the watch
                log.exception("checking the shared causes failed")

    async def sweep(self) -> list[str]:
        """Raise reported switches' alarms, announce changed ones, release the causes that no longer hold, and
        judge again any suspicion nothing is judging. Returns the keys released."""
        live: dict[str, Cause] = {c.key: c for c in self.guard.causes()}
        for key, c in live.items():
            if c.reported:
                await self._root(key, c, c.describe())
        await self._announce()
        released = []
        if time.monotonic() >= self._quiet_until:
            for key, root in self.roots().items():
                if key not in live:
                    await self.release(key, root)
                    released.append(key)
        roots = self.roots()
        for alarm in self.r.alarms.incidents():
            if not alarm.withdrawable or self.pending(alarm.id):
                continue
            if alarm.phase != Phase.INCIDENT_PHASE_HELD:
                self.rejudge(alarm, 0.0)  # suspected or unfenced with nothing scheduled: never left stuck
            elif not alarm.held_by or (alarm.held_by not in live and alarm.held_by not in roots):
                self._again(alarm)        # its cause vanished without an alarm (never raised, or cleared by hand)
        return released

    async def _announce(self) -> None:
        """Each changed cause's alarm, once: its hosts (the withdrawn ones dropped), named up to ``LISTED``."""
        roots = self.roots()
        for key in sorted(self._dirty):
            root = roots.get(key)
            if root is None:
                continue
            members = sorted((a for a in self.r.alarms.incidents() if a.held_by == key), key=lambda a: a.host)
            del root.fault.correlated_fault_ids[:]
            root.fault.correlated_fault_ids.extend(a.id for a in members)
            names = [a.host for a in members]
            root.fault.fault_details["hosts"] = ",".join(names[:LISTED]) + (
                f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
            root.fault.fault_details["held"] = str(len(names))
            root.touch()
            await self.r.publish(root, common_pb2.Timeline())
        self._dirty.clear()

    async def release(self, key: str, root: Alarm) -> None:
        async with self._lock:
            if self.r.alarms.get(root.id) is None:
                return
            self.r.alarms.clear(root.id)
            self._dirty.discard(key)
            root.fault.fault_details["cleared"] = "the cause no longer holds"
            await self.r.publish(root, common_pb2.Timeline(), cleared=True)
        held = self.held(key)
        log.warning("shared cause %s cleared: judging its %d held hosts again", key, len(held))
        for alarm in held:
            self._again(alarm)

    def _again(self, alarm: Alarm) -> None:
        alarm.held_by = ""
        alarm.fault.fault_details.pop("held", None)
        self.rejudge(alarm, self.rejoin_s if alarm.silence else 0.0)

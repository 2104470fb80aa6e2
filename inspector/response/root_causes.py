"""Shared causes as alarms of their own: one root-cause alarm per switch, zone or isolated inspector.

When the fleet guard holds a suspicion (``response/fleet_guard.py``), the
cause gets one critical, administrators-only alarm on its physical resource
(the switch, the zone, or "inspector"), listing the host incidents it
explains in ``correlated_fault_ids``; each held incident names it back, is no
longer a root cause, and its owners hear it is held (host status UNKNOWN, not
fenced). ``watch`` checks every ``tick_s`` whether each cause still holds.
When one clears, its alarm is cleared and every host it held is judged
again: a silent host after a grace (``rejoin_s``) for its agent to
reconnect — withdrawn if it did, fenced if it is still alone in its silence;
a host with reported evidence at once (after the settle wait, in which a
recovering link clears).
"""

from __future__ import annotations

import asyncio
import logging
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


class Publishing(Protocol):
    alarms: AlarmStore

    async def publish(self, alarm: Alarm, tl: common_pb2.Timeline, *, cleared: bool = False,
                      step: Step | None = None, detail: dict[str, Any] | None = None,
                      stage: int = ...) -> None: ...


class RootCauses:
    def __init__(self, responder: Publishing, guard: FleetGuard, rejudge: Callable[[Alarm, float], None],
                 rejoin_s: float, tick_s: float = 0.5) -> None:
        self.r = responder
        self.guard = guard
        self.rejudge = rejudge      # judge a held incident again, after a delay (s)
        self.rejoin_s = rejoin_s    # how long a silent host has to come back once its cause cleared
        self.tick_s = tick_s
        self.tick_s = tick_s
        self._lock = asyncio.Lock()

    def roots(self) -> dict[str, Alarm]:
        """The open root-cause alarms by cause key (they live in the alarm store, so a new leader has them)."""
        return {a.component.removeprefix(PREFIX): a for a in self.r.alarms if a.component.startswith(PREFIX)}

    def held(self, key: str | None = None) -> list[Alarm]:
        return [a for a in self.r.alarms.incidents()
                if a.phase == Phase.INCIDENT_PHASE_HELD and (key is None or a.held_by == key)]

    async def hold(self, alarm: Alarm, judgement: Judgement) -> None:
        """Hold the incident under its cause's alarm (raised, or updated to list it)."""
        cause = next((c for c in self.guard.causes() if c.key == judgement.cause), None)
        root = await self._root(judgement.cause, cause, judgement.reason, alarm)
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

    async def _root(self, key: str, cause: Cause | None, reason: str, member: Alarm | None) -> Alarm:
        """The cause's alarm, raised if new, listing ``member`` among its correlated faults."""
        async with self._lock:
            root = self.roots().get(key)
            if root is None:
                kind = cause.kind if cause else key.split(":")[0]
                resource = cause.resource if cause else key.split(":", 1)[-1]
                fault = new_fault(resource, FAULT_TYPES.get(kind, "doctor.shared.cause"), common_pb2.SEVERITY_CRITICAL,
                                  now_ns(), reason, {"cause": key})
                root = Alarm(resource, PREFIX + key, fault, fences=False, admin_only=True)
                self.r.alarms.add(root)
                log.critical("shared cause %s: %s; holding every fence it explains", key, reason)
            elif member is not None or root.fault.probable_cause != reason:
                root.touch()
            else:
                return root
            if member is not None and member.id not in root.fault.correlated_fault_ids:
                root.fault.correlated_fault_ids.append(member.id)
            root.fault.probable_cause = reason
            root.fault.fault_details["hosts"] = ",".join(sorted(a.host for a in self._members(root, member)))
            await self.r.publish(root, common_pb2.Timeline())
            return root

    def _members(self, root: Alarm, extra: Alarm | None) -> list[Alarm]:
        ids = set(root.fault.correlated_fault_ids)
        out = [a for a in self.r.alarms.incidents() if a.id in ids and a is not extra]
        return [*out, extra] if extra is not None else out

    async def watch(self) -> None:
        """Release every cause that no longer holds; runs until cancelled."""
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.sweep()
            except NotLeader:
                raise
            except Exception:  # noqa: BLE001 - one bad sweep must not end the watch
                log.exception("checking the shared causes failed")

    async def sweep(self) -> list[str]:
        """Release the causes that no longer hold; the keys released."""
        live: dict[str, Cause] = {c.key: c for c in self.guard.causes()}
        for key, c in live.items():  # a switch its monitor reported down is an alarm before any host is held
            if c.reported:
                await self._root(key, c, c.describe(), None)
        released = []
        for key, root in self.roots().items():
            if key in live:
                continue
            await self.release(key, root)
            released.append(key)
        # a held incident whose cause vanished without an alarm (never raised, or cleared by hand): judge again
        roots = self.roots()
        for alarm in self.held():
            if alarm.held_by and alarm.held_by not in live and alarm.held_by not in roots:
                self._again(alarm)
        return released

    async def release(self, key: str, root: Alarm) -> None:
        async with self._lock:
            if self.r.alarms.get(root.id) is None:
                return
            self.r.alarms.clear(root.id)
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

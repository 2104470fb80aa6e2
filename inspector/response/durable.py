"""What the leader keeps in etcd, so a new leader carries on: alarms, host liveness, the recovery journal.

``EtcdDurable`` writes through ``EtcdStore`` (every write fenced by the
term's token); ``NullDurable`` is the standalone inspector's: nothing
outlives the process. The responder calls the same methods either way.

* ``check()`` before every external action (IPMI, controller): raises
  ``NotLeader`` once the term is lost — the responses also run under
  ``Term.run``, which cancels them, but a check right before the action closes
  the window.
* Alarm changes are written in the same transaction as the notification that
  announces them (``publish_ops``), and a recovery's "notify" step too: the
  step is recorded if and only if the notification is in the log, so a new
  leader never announces an incident twice nor misses one.
* Writes are shielded from the caller's cancellation: a write already sent is
  seen through to etcd's answer (applied, or refused by the fencing token,
  which is logged) rather than abandoned with an unknown outcome.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from doctor_common.etcd_guard import NotLeader
from doctor_common.shielded import start_shielded
from inspector.ha.etcd_store import EtcdStore, Incident, Step, StepRecord, json_codec
from inspector.ha.term import Term
from inspector.response.alarms import Alarm, alarm_to_json
from notifier.sqlite_log import SqliteState

log = logging.getLogger("doctor.inspector.durable")
T = TypeVar("T")


class NullDurable:
    """Standalone: always acting, nothing persisted."""

    persistent = False  # what is written here does not outlive the process (maintenance refuses to run on it)

    def check(self) -> None:
        return None

    async def confirm(self) -> None:
        return None

    async def open_incident(self, alarm: Alarm, actions: Sequence[str]) -> None:
        return None

    async def step(self, incident_id: str, step: Step, detail: dict[str, Any]) -> None:
        return None

    async def recorded(self, incident_id: str, step: Step) -> bool:
        """Is the step in the incident's journal? (An append that raised may still have been applied.)"""
        return False

    async def close_incident(self, incident_id: str) -> None:
        return None

    def publish_ops(self, alarm: Alarm, *, cleared: bool = False, step: Step | None = None,
                    detail: dict[str, Any] | None = None) -> list[Any]:
        return []

    async def save_host(self, host: str, liveness: str, boot_id: str, host_boot_id: str = "") -> None:
        return None

    async def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Incident]]:
        return {}, {}, {}

    # -- maintenance sessions (inspector/maintenance/): one JSON document each, None deletes it ------------

    def session_ops(self, session_id: str, data: dict[str, Any] | None) -> list[Any]:
        """The session's write as operations of another transaction (the log append announcing its step)."""
        return []

    async def save_session(self, session_id: str, data: dict[str, Any] | None) -> None:
        return None

    async def load_sessions(self) -> dict[str, dict[str, Any]]:
        return {}


class EtcdDurable(NullDurable):
    persistent = True

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.alarms = store.collection("alarms", *json_codec())
        self.hosts = store.collection("hosts", *json_codec())
        self.sessions = store.collection("maintenance", *json_codec())
        self.term: Term | None = None
        self._host_locks: dict[str, asyncio.Lock] = {}

    def check(self) -> None:
        term = self.term
        if term is None:
            raise NotLeader("this replica does not lead")
        term.check()

    async def _write(self, aw: Awaitable[T], what: str) -> T:
        self.check()
        task = start_shielded(aw)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: _log_refusal(t, what))
            raise
        except NotLeader as exc:
            log.warning("%s refused: %s", what, exc)
            raise

    async def confirm(self) -> None:
        """Prove leadership with a fenced no-op write (before an action no journal write precedes)."""
        await self._write(self.store.txn([], []), "leadership proof")

    # -- the recovery journal ------------------------------------------------------------------

    async def open_incident(self, alarm: Alarm, actions: Sequence[str]) -> None:
        data = {"alarm_id": alarm.id, "host": alarm.host, "actions": sorted(actions)}
        await self._write(self.store.open_incident(alarm.id, data, also=[self.alarms.put_op(alarm.id,
                                                                                            alarm_to_json(alarm))]),
                          f"opening incident {alarm.id}")

    async def step(self, incident_id: str, step: Step, detail: dict[str, Any]) -> None:
        await self._write(self.store.record_step(incident_id, step, detail), f"journal step {step} of {incident_id}")

    async def recorded(self, incident_id: str, step: Step) -> bool:
        return any(s.step == str(step) for s in await self.store.steps(incident_id))

    async def close_incident(self, incident_id: str) -> None:
        await self._write(self.store.close_incident(incident_id), f"closing incident {incident_id}")

    def publish_ops(self, alarm: Alarm, *, cleared: bool = False, step: Step | None = None,
                    detail: dict[str, Any] | None = None) -> list[Any]:
        self.check()
        ops = [self.alarms.delete_op(alarm.id) if cleared else self.alarms.put_op(alarm.id, alarm_to_json(alarm))]
        if step is not None:
            ops.append(self.store.step_op(alarm.id, step, detail))
        return ops

    # -- hosts -----------------------------------------------------------------------------------

    async def save_host(self, host: str, liveness: str, boot_id: str, host_boot_id: str = "") -> None:
        lock = self._host_locks.setdefault(host, asyncio.Lock())
        async with lock:  # one write per host at a time: the last transition is the one that stays
            await self._write(self.hosts.put(host, {"liveness": liveness, "boot_id": boot_id,
                                                    "host_boot_id": host_boot_id}), f"liveness of {host}")

    # -- a new term reads everything -----------------------------------------------------------

    async def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Incident]]:
        """(alarms, hosts, open incidents) as the previous leader left them."""
        alarms, hosts, incidents = await asyncio.gather(self.alarms.items(), self.hosts.items(),
                                                        self.store.incidents())
        return alarms, hosts, incidents

    def session_ops(self, session_id: str, data: dict[str, Any] | None) -> list[Any]:
        self.check()
        return [self.sessions.delete_op(session_id) if data is None else self.sessions.put_op(session_id, data)]

    async def save_session(self, session_id: str, data: dict[str, Any] | None) -> None:
        write = self.sessions.delete(session_id) if data is None else self.sessions.put(session_id, data)
        await self._write(write, f"maintenance session {session_id}")

    async def load_sessions(self) -> dict[str, dict[str, Any]]:
        return await self.sessions.items()


class LocalDurable(NullDurable):
    """Standalone with a local file (``[notifier] state``): alarms, hosts and the recovery journal in SQLite,
    each alarm change in the same transaction as the log append announcing it, so a restart carries on like
    a new leader does (only this process ever acts: no term to check)."""

    persistent = True

    def __init__(self, state: SqliteState, node_id: str = "") -> None:
        self.state = state
        self.node_id = node_id

    async def open_incident(self, alarm: Alarm, actions: Sequence[str]) -> None:
        data = {"alarm_id": alarm.id, "host": alarm.host, "actions": sorted(actions)}
        await self.state.apply(self.state.put_op("incidents", alarm.id, data),
                               self.state.put_op("alarms", alarm.id, alarm_to_json(alarm)))

    async def step(self, incident_id: str, step: Step, detail: dict[str, Any]) -> None:
        await self.state.apply(self._step_op(incident_id, step, detail))

    def _step_op(self, incident_id: str, step: Step, detail: dict[str, Any] | None) -> Any:
        record = {"step": str(step), "node_id": self.node_id, "time_unix": time.time(), "detail": detail or {}}
        return self.state.put_op("steps", f"{incident_id}/{step}", record)

    async def recorded(self, incident_id: str, step: Step) -> bool:
        return f"{incident_id}/{step}" in await self.state.items("steps")

    async def close_incident(self, incident_id: str) -> None:
        await self.state.apply(self.state.delete_op("incidents", incident_id),
                               self.state.delete_prefix_op("steps", f"{incident_id}/"))

    def publish_ops(self, alarm: Alarm, *, cleared: bool = False, step: Step | None = None,
                    detail: dict[str, Any] | None = None) -> list[Any]:
        ops = [self.state.delete_op("alarms", alarm.id) if cleared
               else self.state.put_op("alarms", alarm.id, alarm_to_json(alarm))]
        if step is not None:
            ops.append(self._step_op(alarm.id, step, detail))
        return ops

    async def save_host(self, host: str, liveness: str, boot_id: str, host_boot_id: str = "") -> None:
        await self.state.apply(self.state.put_op("hosts", host, {"liveness": liveness, "boot_id": boot_id,
                                                                 "host_boot_id": host_boot_id}))

    async def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Incident]]:
        alarms, hosts, incidents, steps = await asyncio.gather(
            self.state.items("alarms"), self.state.items("hosts"), self.state.items("incidents"),
            self.state.items("steps"))
        by_incident: dict[str, list[StepRecord]] = {}
        for order, (key, s) in enumerate(steps.items()):
            by_incident.setdefault(key.split("/", 1)[0], []).append(StepRecord(
                s["step"], 0, s.get("node_id", ""), float(s.get("time_unix", 0)), s.get("detail", {}), order))
        return alarms, hosts, {i: Incident(i, d, tuple(by_incident.get(i, ()))) for i, d in incidents.items()}

    def session_ops(self, session_id: str, data: dict[str, Any] | None) -> list[Any]:
        return [self.state.delete_op("maintenance", session_id) if data is None
                else self.state.put_op("maintenance", session_id, data)]

    async def save_session(self, session_id: str, data: dict[str, Any] | None) -> None:
        await self.state.apply(*self.session_ops(session_id, data))

    async def load_sessions(self) -> dict[str, dict[str, Any]]:
        return await self.state.items("maintenance")


def _log_refusal(task: "asyncio.Task[Any]", what: str) -> None:
    if not task.cancelled() and isinstance(task.exception(), NotLeader):
        log.warning("%s refused: %s", what, task.exception())

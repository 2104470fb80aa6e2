"""The NFVI maintenance workflow (seeds 03-architecture figures 5a–5c, 05-implementation figure 9), run by the
acting inspector and journalled step by step.

One session per ``StateChange(maintenance)``, over one or more hosts::

    ACCEPTED ─ disable hosts ─▶ HOSTS_DISABLED ─ notify owners ─▶ OWNERS_NOTIFIED ─ every owner answered ─▶
    REPLIES_RECEIVED ─ migrate ─▶ INSTRUCTIONS_EXECUTED ─ hosts empty ─▶ HOSTS_EMPTY ─▶ IN_MAINTENANCE
        ─ StateChange(normal) ─▶ COMPLETED (hosts enabled, owners told)

    a NACK, a reply deadline missed, a failed or late move, a host fenced by the fault chain, or an
    administrator's cancel ─▶ ROLLING_BACK ─ hosts enabled, owners told ─▶ ROLLED_BACK (or FAILED)

Every step is recorded before the next begins (``durable.save_session``), and
each owner notice in the same transaction as the log append that carries it,
so a new leader (or a restarted standalone inspector) resumes a session at
its last recorded step: a notice is never sent twice, a move asked before
the crash is checked (``Outcome.started``) before it is asked again.

A host in a session stays under the fault chain: a fault there is handled
as anywhere (the owners of the servers still on it must hear), and the
session rolls back. Once a host is *in* maintenance (empty, being worked
on), ``in_maintenance`` tells the responder not to fence it: a host whose
firmware is being flashed shows every symptom of a fault, and has nobody
on it to protect.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from controller_adapter.base import Controller, ControllerError, NotFound, ServerState
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.auth import Principal
from doctor_common.etcd_guard import NotLeader
from inspector.maintenance.session import LEAVE, MOVES, S, Answer, Outcome, Session, state_name
from inspector.response import crashpoint
from inspector.response.correlate import ResourceMap

log = logging.getLogger("doctor.inspector.maintenance")

POLL_S = 0.05            # how often a move, an owner's own action or an empty host is checked
MAX_HOSTS = 100          # per StateChange
MAX_SERVERS = 1000       # per Retire
MAX_TEXT = 1024          # reason, metadata values
MAX_METADATA = 64
HISTORY = 200            # settled sessions kept for StateQuery / Watch
ROLLBACK_ATTEMPTS = 5
STEP_ATTEMPTS = 5        # a step failing this often in a row rolls the session back


@dataclass(frozen=True)
class MaintenanceConfig:
    reply_timeout_s: float = 120.0       # owners answer within this (the request may say otherwise)
    empty_timeout_s: float = 600.0       # the moves and owners' own actions finish within this
    max_parallel_moves: int = 4


class Refused(Exception):
    """A request the workflow cannot take; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Rollback(Exception):
    pass


Spawn = Callable[[Coroutine[Any, Any, None], str], None]


class Workflow:
    def __init__(self, controller: Controller, resources: ResourceMap, publish: Callable[..., Any], durable: Any,
                 cfg: MaintenanceConfig, spawn: Spawn, host_state: Callable[[str], str],
                 blockers: Callable[[str], Awaitable[list[str]]] | None = None,
                 resync: Callable[[str], None] | None = None,
                 facts: Callable[[str], dict[str, str]] | None = None,
                 incident_on: Callable[[str], bool] | None = None) -> None:
        self.controller = controller
        self.resources = resources
        self.publish = publish          # Publisher.publish(notification, also=ops)
        self.durable = durable
        self.cfg = cfg
        self.spawn = spawn              # runs a session under the current term (cancelled when it is lost)
        self.host_state = host_state
        self.blockers = blockers or _nothing_wrong   # what says a host is not fit to serve (enable-host's checks)
        self.resync = resync or (lambda _host: None)  # ask the host's agent for its whole state again
        self.facts = facts or (lambda _host: {})     # what the host runs, as its agent says (firmware, hypervisor)
        self.incident_on = incident_on or (lambda _host: False)  # the fault chain has an open incident there
        self.sessions: dict[str, Session] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, set[asyncio.Queue[mpb.MaintenanceProgress | None]]] = {}
        self._asked: set[tuple[str, str]] = set()  # (session, server) moves this process asked for
        self._locks: dict[str, asyncio.Lock] = {}

    # -- who is where ----------------------------------------------------------------------------

    def session_of(self, host: str) -> Session | None:
        """The host's session that is not over (in progress, or in maintenance)."""
        for s in self.sessions.values():
            if host in s.hosts and not s.over:
                return s
        return None

    def in_maintenance(self, host: str) -> bool:
        """Emptied and being worked on (not once its end was asked: it is being returned to service)."""
        s = self.session_of(host)
        return s is not None and s.state == S.SESSION_STATE_IN_MAINTENANCE and not s.ended_by

    def session_active(self, host: str) -> bool:
        """In a session that has not emptied it yet (its servers may still run there)."""
        s = self.session_of(host)
        return s is not None and s.active

    # -- a term begins / ends --------------------------------------------------------------------

    async def restore(self) -> list[Session]:
        """What the previous leader (or run) left; the sessions not settled are resumed by the caller."""
        self.sessions = {sid: Session.from_json(d) for sid, d in (await self.durable.load_sessions()).items()}
        return [s for s in self.sessions.values() if not s.over]

    def resume(self, s: Session) -> None:
        log.warning("maintenance session %s on %s: carrying on from %s", s.id, ",".join(s.hosts), state_name(s.state))
        self.spawn(self._run(s), f"maintenance session {s.id}")

    def clear(self) -> None:
        """No longer acting: the next leader carries on; watchers are ended (they follow it)."""
        self.sessions.clear()
        self._wake.clear()
        self._asked.clear()
        for queues in self._watchers.values():
            for q in queues:
                _end_queue(q)
        self._watchers.clear()

    # -- requests ----------------------------------------------------------------------------------

    def _require_durable(self) -> None:
        if not getattr(self.durable, "persistent", False):
            raise Refused("FAILED_PRECONDITION", "maintenance needs state that outlives this process (a restart "
                                                 "would forget the session and leave its hosts disabled): set "
                                                 "[notifier] state (standalone) or run replicated with [etcd]")

    async def start(self, principal: Principal, req: mpb.StateChangeRequest) -> Session:
        self._require_durable()
        wanted = [(r.physical_resource_id, r.physical_resource_state, dict(r.metadata))
                  for r in req.physical_resource_state]
        hosts = [h for h, _, _ in wanted]
        if not hosts:
            raise Refused("INVALID_ARGUMENT", "physical_resource_state lists no host")
        if len(hosts) > MAX_HOSTS:
            raise Refused("INVALID_ARGUMENT", f"at most {MAX_HOSTS} hosts per request")
        if len(set(hosts)) != len(hosts):
            raise Refused("INVALID_ARGUMENT", "a host is listed twice")
        if len(req.reason) > MAX_TEXT:
            raise Refused("INVALID_ARGUMENT", f"reason is longer than {MAX_TEXT} characters")
        _check_timeouts(req)
        metadata: dict[str, str] = {}
        for host, _, md in wanted:
            if len(md) > MAX_METADATA or any(len(k) > 255 or len(v) > MAX_TEXT for k, v in md.items()):
                raise Refused("INVALID_ARGUMENT", f"metadata of {host!r}: at most {MAX_METADATA} entries, keys of "
                                                  f"255 and values of {MAX_TEXT} characters")
            metadata.update({f"{host}/{k}": v for k, v in md.items()})  # host names may hold dots, never "/"
        for host in hosts:
            h = await self._known(host)
            other = self.session_of(host)
            if other is not None:
                raise Refused("ALREADY_EXISTS", f"host {host!r} is already in maintenance session {other.id} "
                                                f"({state_name(other.state)}): one session per host")
            if h.forced_down:
                raise Refused("FAILED_PRECONDITION", f"host {host!r} is forced down (fenced): enable it first "
                                                     "(doctorctl enable-host), or work on it as it is")
            if h.disabled:
                raise Refused("FAILED_PRECONDITION", f"host {host!r} is already disabled ({h.disabled_reason or 'no reason given'})"
                                                     ": enable it first, or work on it as it is")
        return await self._open(principal, req, hosts, "maintenance", ", ".join(hosts), metadata=metadata)

    async def retire(self, principal: Principal, req: mpb.RetireRequest) -> Session:
        """VM retirement: the consent flow for named servers; no host is disabled."""
        self._require_durable()
        ids = list(req.server_ids)
        if not ids:
            raise Refused("INVALID_ARGUMENT", "server_ids lists no server")
        if len(ids) > MAX_SERVERS or len(set(ids)) != len(ids) or any(not i or len(i) > 255 for i in ids):
            raise Refused("INVALID_ARGUMENT", f"server_ids: at most {MAX_SERVERS} ids of 1-255 characters, each once")
        _check_timeouts(req)
        if len(req.reason) > MAX_TEXT:
            raise Refused("INVALID_ARGUMENT", f"reason is longer than {MAX_TEXT} characters")
        hosts: list[str] = []
        for sid in ids:
            try:
                host, _ = await self.controller.server_host_status(sid)
            except NotFound:
                raise Refused("NOT_FOUND", f"server {sid!r} does not exist") from None
            if not host:
                raise Refused("FAILED_PRECONDITION", f"server {sid!r} is on no host")
            other = self.session_of(host)
            if other is not None:
                raise Refused("ALREADY_EXISTS", f"server {sid!r} is on {host}, in session {other.id} "
                                                f"({state_name(other.state)}): one session per host")
            if host not in hosts:
                hosts.append(host)
        return await self._open(principal, req, hosts, "retirement", ", ".join(ids), retire=ids)

    async def _open(self, principal: Principal, req: mpb.StateChangeRequest | mpb.RetireRequest, hosts: list[str],
                    kind: str, what: str, **fields: Any) -> Session:
        """Record a new session (``kind``: maintenance or retirement, of ``what``) and run it."""
        s = Session(id=uuid.uuid4().hex[:12], hosts=hosts, reason=req.reason, requested_by=principal.name,
                    reply_timeout_s=float(req.reply_timeout_s or self.cfg.reply_timeout_s),
                    empty_timeout_s=float(req.empty_timeout_s or self.cfg.empty_timeout_s), **fields)
        await self._register(s)
        self._progress(s, f"{kind} accepted from {principal.name}: {what}")
        self.spawn(self._run(s), f"{kind} session {s.id}")
        log.warning("%s session %s: %s asks for %s (%s)", kind, s.id, principal.name, what,
                    req.reason or "no reason given")
        return s

    async def _register(self, s: Session) -> None:
        """Claim the session's hosts (checked again with no await in between: two requests racing for one host
        cannot both pass), then record it; a failed write gives the hosts back."""
        for host in s.hosts:
            other = self.session_of(host)
            if other is not None:
                raise Refused("ALREADY_EXISTS", f"host {host!r} is already in maintenance session {other.id} "
                                                f"({state_name(other.state)}): one session per host")
        self.sessions[s.id] = s
        try:
            await self._save(s)
        except BaseException:
            self.sessions.pop(s.id, None)
            raise

    async def end(self, principal: Principal, hosts: list[str], force: bool = False) -> list[Session]:
        """Back to normal: a session in maintenance completes — refused while a host's agent or BMC says it is not
        fit to serve, unless forced; one still in progress is cancelled (rolled back: its hosts were fit)."""
        found: list[Session] = []
        for host in hosts:
            await self._known(host)
            s = self.session_of(host)
            if s is None:
                raise Refused("FAILED_PRECONDITION", f"host {host!r} is in no maintenance session")
            if s not in found:
                found.append(s)
        if not force:
            wrong = [f"{h}: {why}" for s in found if s.state == S.SESSION_STATE_IN_MAINTENANCE for h in s.hosts
                     for why in await self.blockers(h)]
            if wrong:
                raise Refused("FAILED_PRECONDITION", "not back in service: " + "; ".join(wrong)
                              + " (fix it, or end with force if you know better)")
        for s in found:
            if not s.ended_by:
                s.ended_by = principal.name
                try:
                    await self._save(s)  # a new leader ends (or cancels) it too
                except BaseException:
                    s.ended_by = ""
                    raise
                self._progress(s, f"{principal.name} asks to end it")
                self._wake_up(s)
        return found

    async def reply(self, principal: Principal, req: mpb.MaintenanceReply) -> Session:
        s = self.sessions.get(req.session_id)
        if s is None:
            raise Refused("NOT_FOUND", f"no maintenance session {req.session_id!r}")
        if s.state != S.SESSION_STATE_OWNERS_NOTIFIED:
            raise Refused("FAILED_PRECONDITION", f"session {s.id} takes no replies now: it is {state_name(s.state)}")
        if len(req.reason) > MAX_TEXT:
            raise Refused("INVALID_ARGUMENT", f"reason is longer than {MAX_TEXT} characters")
        mine = {i: o for i, o in s.servers.items() if principal.owns(o.project_id)}
        if not mine:
            raise Refused("PERMISSION_DENIED", f"session {s.id} asks nothing of {principal.name}: none of its servers "
                                               "are yours")
        given: dict[str, mpb.ServerInstruction] = {}
        for ins in req.instructions:
            if ins.server_id not in s.servers:
                raise Refused("INVALID_ARGUMENT", f"server {ins.server_id!r} is not in session {s.id}")
            if ins.server_id not in mine:
                raise Refused("PERMISSION_DENIED", f"server {ins.server_id!r} belongs to another project")
            if ins.instruction not in s.allowed:
                raise Refused("INVALID_ARGUMENT", f"server {ins.server_id!r}: give an instruction "
                                                  f"({', '.join(mpb.Instruction.Name(i) for i in s.allowed)})")
            if ins.target_host:
                if ins.instruction not in MOVES:
                    raise Refused("INVALID_ARGUMENT", f"server {ins.server_id!r}: target_host goes with a migration")
                if ins.target_host in s.hosts:
                    raise Refused("INVALID_ARGUMENT", f"server {ins.server_id!r}: {ins.target_host!r} is going into "
                                                      "maintenance itself")
                await self._known(ins.target_host)
            if ins.server_id in given:
                raise Refused("INVALID_ARGUMENT", f"server {ins.server_id!r} is given twice")
            given[ins.server_id] = ins
        nack = req.nack or any(i.instruction == mpb.INSTRUCTION_NACK for i in given.values())
        if not nack and set(given) != set(mine):
            raise Refused("INVALID_ARGUMENT", "give an instruction for each of your servers in the session; missing: "
                                              + ", ".join(sorted(set(mine) - set(given))))
        if s.state != S.SESSION_STATE_OWNERS_NOTIFIED:  # moved on while the reply was checked
            raise Refused("FAILED_PRECONDITION", f"session {s.id} takes no replies now: it is {state_name(s.state)}")
        projects = sorted({o.project_id for o in mine.values()})
        before = ({sid: (s.servers[sid].instruction, s.servers[sid].target) for sid in given},
                  {p: s.answers.get(p) for p in projects})
        for sid, ins in given.items():
            o = s.servers[sid]
            o.instruction, o.target = ins.instruction, ins.target_host
        for p in projects:
            s.answers[p] = Answer(nack=nack, reason=req.reason, by=principal.name)
        try:
            await self._save(s)  # the answer stands once acknowledged, and only then
        except BaseException:
            for sid, (instruction, target) in before[0].items():
                s.servers[sid].instruction, s.servers[sid].target = instruction, target
            for p, answer in before[1].items():
                if answer is None:
                    s.answers.pop(p, None)
                else:
                    s.answers[p] = answer
            raise
        self._progress(s, f"{'NACK' if nack else 'reply'} from {principal.name} for {', '.join(projects)}"
                          + (f": {req.reason}" if req.reason else ""))
        self._wake_up(s)
        return s

    def query(self, f: mpb.StateQueryFilter) -> list[mpb.PhysicalResourceStateInfo]:
        ids = set(f.physical_resource_id)
        out = []
        for name in sorted(self.resources.hosts):
            h = self.resources.hosts[name]
            state = self.host_state(name)
            if (ids and name not in ids) or (f.zone_id and h.zone != f.zone_id) or \
                    (f.physical_resource_state and state != f.physical_resource_state):
                continue
            facts = self.facts(name)
            info = mpb.PhysicalResourceStateInfo(physical_resource_id=name, physical_resource_state=state,
                                                 zone_id=h.zone, host_status=_HOST_STATUS.get(h.status.value, 0),
                                                 firmware_version=facts.get("firmware_version", ""),
                                                 hypervisor_version=facts.get("hypervisor_version", ""))
            if facts.get("kernel"):
                info.metadata["kernel"] = facts["kernel"]
            s = self.session_of(name) or self._last_session(name)
            if s is not None:
                info.session.CopyFrom(s.info())
                prefix = f"{name}/"
                info.metadata.update({k[len(prefix):]: v for k, v in s.metadata.items() if k.startswith(prefix)})
            out.append(info)
        return out

    def watch(self, session_id: str) -> asyncio.Queue[mpb.MaintenanceProgress | None]:
        """Progress events of the session from now on (None: the stream must end: not acting any more)."""
        if session_id not in self.sessions:
            raise Refused("NOT_FOUND", f"no maintenance session {session_id!r}")
        q: asyncio.Queue[mpb.MaintenanceProgress | None] = asyncio.Queue(maxsize=1000)
        self._watchers.setdefault(session_id, set()).add(q)
        return q

    def unwatch(self, session_id: str, q: asyncio.Queue[mpb.MaintenanceProgress | None]) -> None:
        self._watchers.get(session_id, set()).discard(q)

    def progress(self, s: Session, event: str) -> mpb.MaintenanceProgress:
        return mpb.MaintenanceProgress(session=s.info(), event=event, time_unix_nanos=time.time_ns())

    # -- the session's life ------------------------------------------------------------------------

    async def _run(self, s: Session) -> None:
        steps = {
            S.SESSION_STATE_ACCEPTED: self._disable,
            S.SESSION_STATE_HOSTS_DISABLED: self._notify_owners,
            S.SESSION_STATE_OWNERS_NOTIFIED: self._collect,
            S.SESSION_STATE_REPLIES_RECEIVED: self._execute,
            S.SESSION_STATE_INSTRUCTIONS_EXECUTED: self._confirm_empty,
            S.SESSION_STATE_HOSTS_EMPTY: self._enter,
            S.SESSION_STATE_IN_MAINTENANCE: self._until_ended,
            S.SESSION_STATE_ROLLING_BACK: self._rollback,
        }
        failures = 0
        while not s.over:
            try:
                if s.state != S.SESSION_STATE_ROLLING_BACK:
                    self._check(s)
                await steps[s.state](s)
                failures = 0
            except _Rollback as rb:
                s.detail = str(rb)
                await self._step(s, S.SESSION_STATE_ROLLING_BACK, f"rolling back: {rb}")
                log.warning("maintenance session %s rolls back: %s", s.id, rb)
            except (NotLeader, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - the controller or etcd failed a step: try again, then give up
                failures += 1
                log.warning("maintenance session %s: %s failed (%d): %s: %s", s.id, state_name(s.state), failures,
                            type(exc).__name__, exc)
                if failures >= STEP_ATTEMPTS and s.active and s.state != S.SESSION_STATE_ROLLING_BACK:
                    s.detail = f"{state_name(s.state)} kept failing: {exc}"
                    s.state = S.SESSION_STATE_ROLLING_BACK  # recorded with the next write
                    failures = 0
                    continue
                await asyncio.sleep(min(0.1 * 2 ** failures, 5.0))
        self._settled(s)

    def _check(self, s: Session) -> None:
        """Before every step and while waiting: the fault chain fenced a host, or an administrator cancels."""
        if not s.active:
            return
        for host in s.hosts:
            h = self.resources.hosts.get(host)
            if h is not None and h.forced_down:
                raise _Rollback(f"host {host} was fenced by the fault chain")
            if self.incident_on(host):
                # suspected, held or being fenced: the fault chain has it; it must not go into maintenance with
                # an incident pending (a later retry could power it off while it is worked on)
                raise _Rollback(f"a fault on host {host} is being handled by the fault chain")
        if s.ended_by:
            raise _Rollback(f"cancelled by {s.ended_by}")

    async def _step(self, s: Session, state: int, event: str, notice: bool = False) -> None:
        """Record the session at ``state`` (with the owners' notice in the same write when ``notice``)."""
        previous, s.state = s.state, state
        try:
            if notice:
                await self._publish(s)
            else:
                await self._save(s)
        except BaseException:
            s.state = previous  # not recorded: the step is done again (its actions are idempotent)
            raise
        self._progress(s, event)

    async def _disable(self, s: Session) -> None:
        if s.retire:  # the hosts stay in service: only the named servers leave them
            await self._step(s, S.SESSION_STATE_HOSTS_DISABLED, "nothing disabled: a retirement of named servers")
            return
        for host in s.hosts:
            await self.controller.set_disabled(host, True, f"nfv-doctor maintenance {s.id}: {s.reason}"[:255])
            self.resources.set_host(host, disabled=True, disabled_reason=f"nfv-doctor maintenance {s.id}")
        await self._step(s, S.SESSION_STATE_HOSTS_DISABLED, "hosts disabled: no new placements")

    async def _notify_owners(self, s: Session) -> None:
        s.servers = {}
        for host in s.hosts:
            for srv in await self.controller.servers_on_host(host):
                if not s.retire or srv.id in s.retire:
                    s.servers[srv.id] = Outcome(srv.id, srv.project_id, host, host)
        s.projects = sorted({o.project_id for o in s.servers.values()})
        s.reply_deadline_ns = time.time_ns() + int(s.reply_timeout_s * 1e9)
        await self._step(s, S.SESSION_STATE_OWNERS_NOTIFIED,
                         f"owners notified: {len(s.projects)} projects, {len(s.servers)} servers", notice=True)

    async def _collect(self, s: Session) -> None:
        while True:
            self._check(s)
            nacks = [f"{p} ({a.reason})" if a.reason else p for p, a in s.answers.items() if a.nack]
            if nacks:
                raise _Rollback(f"NACK from {', '.join(nacks)}")
            missing = s.missing()
            if not missing:
                break
            left = s.reply_deadline_ns - time.time_ns()
            if left <= 0:
                raise _Rollback(f"no reply by the deadline from {', '.join(missing)}")
            await self._sleep(s, left / 1e9)
        await self._step(s, S.SESSION_STATE_REPLIES_RECEIVED, "every owner answered")

    async def _execute(self, s: Session) -> None:
        s.empty_deadline_ns = s.empty_deadline_ns or time.time_ns() + int(s.empty_timeout_s * 1e9)
        gate = asyncio.Semaphore(self.cfg.max_parallel_moves)
        todo = [o for o in s.servers.values() if not o.done]
        results = await asyncio.gather(*(self._carry_out(s, o, gate) for o in todo), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for r in failed:
            if isinstance(r, (NotLeader, asyncio.CancelledError)):
                raise r
        try:
            await self.resources.load()  # servers moved: the map the fault chain correlates with follows
        except Exception as exc:  # noqa: BLE001 - refreshed again later
            log.warning("could not refresh the resource map after the moves: %s", exc)
        if failed:
            raise _Rollback("; ".join(str(r) for r in failed))
        if s.retire:
            await self._step(s, S.SESSION_STATE_COMPLETED, "retired: every named server has left its host",
                             notice=True)
            return
        await self._step(s, S.SESSION_STATE_INSTRUCTIONS_EXECUTED, "instructions executed")

    async def _carry_out(self, s: Session, o: Outcome, gate: asyncio.Semaphore) -> None:
        if o.instruction == LEAVE:
            await self._shut_down(s, o)
            return
        if o.instruction in MOVES and o.started and (s.id, o.server_id) not in self._asked:
            # asked by a previous leader (or run): ask again only if it is still on its host and not moving —
            # a move that happened or is under way is not asked twice
            here = {x.id: x for x in await self.controller.servers_on_host(o.from_host)}
            srv = here.get(o.server_id)
            if srv is not None and srv.state is not ServerState.MIGRATING:
                log.warning("maintenance session %s: %s was to move but is still on %s: asking again", s.id,
                            o.server_id, o.from_host)
                o.started = False
        if o.instruction in MOVES and not o.started:
            async with gate:
                self._check(s)
                o.started = True
                await self._save(s)  # recorded before it is asked: a new leader checks before asking again
                self._asked.add((s.id, o.server_id))
                # gone already (a move whose record a crash lost, the owner's doing): nothing to ask
                if o.server_id in {x.id for x in await self.controller.servers_on_host(o.from_host)}:
                    left_s = max(0.1, (s.empty_deadline_ns - time.time_ns()) / 1e9)
                    try:  # a backend that waits for its migration (OpenStack) waits at most until the deadline
                        async with asyncio.timeout(left_s):
                            await self.controller.migrate_server(
                                o.server_id, o.target or None, live=o.instruction == mpb.INSTRUCTION_LIVE_MIGRATE,
                                wait=True)
                    except TimeoutError:
                        o.error = f"the move of {o.server_id} did not finish within {s.empty_timeout_s:.0f}s"
                        await self._save(s)
                        raise _Rollback(o.error) from None
                    except ControllerError as exc:
                        o.error = f"{mpb.Instruction.Name(o.instruction).removeprefix('INSTRUCTION_').lower()} " \
                                  f"of {o.server_id} failed: {exc}"
                        await self._save(s)
                        raise _Rollback(o.error) from None
                    crashpoint.reached("maintenance_moving")
        while True:  # moved (or, the owner's own action: gone) within the session's time for emptying
            self._check(s)
            try:
                host, _ = await self.controller.server_host_status(o.server_id)
            except NotFound:
                host = ""  # deleted by its owner
            if host != o.from_host:
                o.host, o.done = host, True
                await self._save(s)
                self._progress(s, f"server {o.server_id} " + (f"now on {host}" if host else "deleted by its owner"))
                return
            if time.time_ns() > s.empty_deadline_ns:
                o.error = f"server {o.server_id} still on {o.from_host} after {s.empty_timeout_s:.0f}s"
                raise _Rollback(o.error)
            await self._sleep(s, POLL_S)

    async def _shut_down(self, s: Session, o: Outcome) -> None:
        """LEAVE: shut it down where it is (and check it is), to be started again when the maintenance ends."""
        if not o.started:
            o.started = True
            await self._save(s)
        while True:
            self._check(s)
            if (s.id, o.server_id) not in self._asked:  # asked once by this process (a shutdown takes a while)
                failed = await self.controller.set_servers_running([o.server_id], False)
                if failed:
                    o.error = f"shutting {o.server_id} down failed: {failed[o.server_id]}"
                    await self._save(s)
                    raise _Rollback(o.error)
                self._asked.add((s.id, o.server_id))
            here = {x.id: x for x in await self.controller.servers_on_host(o.from_host)}
            srv = here.get(o.server_id)
            if srv is not None and srv.state is ServerState.STOPPED:
                o.done = True
                await self._save(s)
                self._progress(s, f"server {o.server_id} shut down on {o.from_host}, as its owner asked")
                return
            if srv is None:
                raise _Rollback(f"server {o.server_id}, to be left shut down on {o.from_host}, is not there any more")
            if time.time_ns() > s.empty_deadline_ns:
                o.error = f"server {o.server_id} not shut down after {s.empty_timeout_s:.0f}s"
                raise _Rollback(o.error)
            await self._sleep(s, POLL_S)

    async def _start_left(self, s: Session) -> list[str]:
        """Start the servers left shut down (the maintenance is over, or rolled back); the failures, in words."""
        ids = [o.server_id for o in s.left() if o.started]
        failed = await self.controller.set_servers_running(ids, True) if ids else {}
        for sid, exc in failed.items():
            s.servers[sid].error = f"could not be started again: {exc}"
        return [f"{sid} could not be started again: {exc}" for sid, exc in failed.items()]

    async def _confirm_empty(self, s: Session) -> None:
        s.empty_deadline_ns = s.empty_deadline_ns or time.time_ns() + int(s.empty_timeout_s * 1e9)
        left = {o.server_id for o in s.left()}
        while True:
            self._check(s)
            full: dict[str, list[str]] = {}
            for h in s.hosts:
                on = [x.id for x in await self.controller.servers_on_host(h)]
                others = [x for x in on if x not in left]
                # with servers left on it, the host is empty of the others (it cannot be "empty" for the controller)
                if others or (len(others) == len(on) and not await self.controller.host_is_empty(h)):
                    if not others and await self.controller.settle_migrations(h):
                        continue  # moves that waited for us (an interrupted cold migration's confirmation)
                    full[h] = others
            if not full:
                break
            if time.time_ns() > s.empty_deadline_ns:
                names = [x for xs in full.values() for x in xs]
                raise _Rollback(f"{', '.join(full)} not empty in time (still: {', '.join(names) or 'a migration'})")
            await self._sleep(s, POLL_S)
        await self._step(s, S.SESSION_STATE_HOSTS_EMPTY, "hosts empty")

    async def _enter(self, s: Session) -> None:
        await self._step(s, S.SESSION_STATE_IN_MAINTENANCE, "in maintenance: the hosts may be worked on", notice=True)
        log.warning("maintenance session %s: %s in maintenance", s.id, ", ".join(s.hosts))

    async def _until_ended(self, s: Session) -> None:
        while not s.ended_by:
            await self._sleep(s, 3600)
        for host in s.hosts:
            await self.controller.set_disabled(host, False)
            self.resources.set_host(host, disabled=False, disabled_reason="")
            self.resync(host)  # a fault the work left behind is raised again, now that it counts
        problems = await self._start_left(s)
        if problems:
            s.detail = "; ".join(problems)
        await self._step(s, S.SESSION_STATE_COMPLETED, f"maintenance ended by {s.ended_by}: hosts back in service"
                         + (f" ({s.detail})" if problems else ""), notice=True)
        log.warning("maintenance session %s: %s back in service (%s)", s.id, ", ".join(s.hosts), s.ended_by)

    async def _rollback(self, s: Session) -> None:
        """Enable the hosts again and start the servers left shut down; retried (capped backoff) until done: a
        session is never left half rolled back and forgotten."""
        errors: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            errors = []
            for host in [] if s.retire else s.hosts:
                try:
                    await self.controller.set_disabled(host, False)
                    self.resources.set_host(host, disabled=False, disabled_reason="")
                except ControllerError as exc:
                    errors.append(f"{host} could not be enabled again: {exc}")
            try:
                errors += await self._start_left(s)
            except ControllerError as exc:
                errors.append(f"the servers left shut down could not be started again: {exc}")
            if not errors:
                break
            if attempt == ROLLBACK_ATTEMPTS:
                log.error("maintenance session %s: rollback not done yet, still trying: %s", s.id, "; ".join(errors))
                self._progress(s, "rollback not done yet, still trying: " + "; ".join(errors))
            await asyncio.sleep(min(0.2 * 2 ** min(attempt, 10), 30.0))
        await self._step(s, S.SESSION_STATE_ROLLED_BACK, "rolled back: hosts enabled, owners told", notice=True)

    # -- notices, progress, waiting ------------------------------------------------------------------

    async def _publish(self, s: Session) -> None:
        """The owners' notice of the session's state, persisted with the session (or its removal, once over)."""
        hs = (common_pb2.HOST_STATUS_MAINTENANCE if not s.retire and s.state in (S.SESSION_STATE_OWNERS_NOTIFIED,
                                                                                  S.SESSION_STATE_IN_MAINTENANCE)
              else common_pb2.HOST_STATUS_UP)
        asked = s.state == S.SESSION_STATE_OWNERS_NOTIFIED
        held = asked or s.state == S.SESSION_STATE_IN_MAINTENANCE
        virtual = [common_pb2.VirtualResourceInfo(
            virtual_resource_id=o.server_id, virtual_resource_type="server", project_id=o.project_id,
            virtual_resource_state="maintenance" if asked or (held and o.instruction == LEAVE and o.done)
            else "normal", physical_resource_id=o.host,
            host_status=hs if o.host in s.hosts else common_pb2.HOST_STATUS_UP) for o in s.servers.values()]
        physical = [common_pb2.PhysicalResourceInfo(
            physical_resource_id=h, physical_resource_state="maintenance" if hs == common_pb2.HOST_STATUS_MAINTENANCE
            else "normal", zone_id=self.resources.hosts[h].zone if h in self.resources.hosts else "", host_status=hs,
            metadata={k[len(h) + 1:]: v for k, v in s.metadata.items() if k.startswith(f"{h}/")})
            for h in s.hosts]
        notice = mpb.MaintenanceNotification(
            session_id=s.id, state=s.state, reply_deadline_unix_nanos=s.reply_deadline_ns if asked else 0,
            allowed=list(s.allowed) if asked else [], reason=s.reason,  # s.detail may name other projects
            servers=[o.to_proto() for o in s.servers.values()])
        n = fault_pb2.FaultNotification(notification_id=f"maintenance.{s.id}.{state_name(s.state)}",
                                        event_time_unix_nanos=time.time_ns(), virtual_resource_info=virtual,
                                        physical_resource_info=physical, maintenance=notice)
        async with self._saving(s):
            await self.publish(n, also=self.durable.session_ops(s.id, s.to_json()))

    def _progress(self, s: Session, event: str) -> None:
        msg = self.progress(s, event)
        for q in list(self._watchers.get(s.id, ())):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # a watcher that stopped reading is let go; the session is not held
                self._watchers[s.id].discard(q)
                _end_queue(q)

    def _settled(self, s: Session) -> None:
        """Over: its durable record goes (StateQuery keeps it in memory, as the last of its hosts)."""
        self.spawn(self._forget(s), f"closing maintenance session {s.id}")
        over = [x for x in self.sessions.values() if x.over]
        for old in sorted(over, key=lambda x: x.created_ns)[:-HISTORY]:
            self.sessions.pop(old.id, None)

    async def _forget(self, s: Session) -> None:
        async with self._saving(s):
            await self.durable.save_session(s.id, None)

    def _saving(self, s: Session) -> asyncio.Lock:
        """One write of a session at a time, each serialising it when its turn comes: concurrent steps (moves in
        parallel) never let an older picture of the session land after a newer one."""
        return self._locks.setdefault(s.id, asyncio.Lock())

    async def _save(self, s: Session) -> None:
        async with self._saving(s):
            await self.durable.save_session(s.id, s.to_json())

    def _wake_up(self, s: Session) -> None:
        ev = self._wake.get(s.id)
        if ev is not None:
            ev.set()

    async def _sleep(self, s: Session, seconds: float) -> None:
        """Until woken (a reply, an end) or ``seconds`` pass, at most a second: fencing is checked that often."""
        ev = self._wake.setdefault(s.id, asyncio.Event())
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the term's cancellation (gh-86296)
            async with asyncio.timeout(min(max(seconds, 0.0), 1.0)):
                await ev.wait()
        except TimeoutError:
            pass
        ev.clear()

    async def _known(self, host: str) -> Any:
        if not host:
            raise Refused("INVALID_ARGUMENT", "physical_resource_id is required")
        try:
            return await self.resources.ensure_host(host)
        except NotFound:
            raise Refused("NOT_FOUND", f"host {host!r} is not known to the controller") from None

    def _last_session(self, host: str) -> Session | None:
        mine = [s for s in self.sessions.values() if host in s.hosts]
        return max(mine, key=lambda s: s.created_ns) if mine else None


MAX_TIMEOUT_S = 86400


def _check_timeouts(req: mpb.StateChangeRequest | mpb.RetireRequest) -> None:
    for name in ("reply_timeout_s", "empty_timeout_s"):
        if getattr(req, name) > MAX_TIMEOUT_S:
            raise Refused("INVALID_ARGUMENT", f"{name}: at most {MAX_TIMEOUT_S} (a day); 0 for the default")


def _end_queue(q: "asyncio.Queue[mpb.MaintenanceProgress | None]") -> None:
    """Tell a watcher's stream to end: its backlog is dropped so the end always fits."""
    while not q.empty():
        q.get_nowait()
    q.put_nowait(None)


async def _nothing_wrong(_host: str) -> list[str]:
    return []


_HOST_STATUS = {"UP": common_pb2.HOST_STATUS_UP, "UNKNOWN": common_pb2.HOST_STATUS_UNKNOWN,
                "DOWN": common_pb2.HOST_STATUS_DOWN, "MAINTENANCE": common_pb2.HOST_STATUS_MAINTENANCE}

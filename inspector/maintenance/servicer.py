"""The ``doctor.v1.Maintenance`` service: administrators' StateChange / StateQuery / Watch, consumers' Reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.api import maintenance_pb2_grpc
from controller_adapter.base import BackendUnavailable, ControllerError
from doctor_common.audit import Audit
from doctor_common.auth import Principal, TokenAuth
from doctor_common.etcd_guard import EtcdError, NotLeader
from inspector.maintenance.session import OVER_STATES as OVER
from inspector.maintenance.session import S, Session
from inspector.maintenance.workflow import Refused, Workflow

Gate = Callable[..., Awaitable[None]]


async def _refuse(context: grpc.aio.ServicerContext, exc: Refused) -> NoReturn:
    await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
    raise AssertionError("abort returned")  # pragma: no cover


T = TypeVar("T")


async def _answer(context: grpc.aio.ServicerContext, gate: Gate, work: Awaitable[T]) -> T:
    """Run a workflow call; what it raises becomes a status saying what to do (never UNKNOWN)."""
    try:
        return await work
    except Refused as exc:
        await _refuse(context, exc)
    except NotLeader as exc:
        await gate(context)  # names the leader when one is known
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"this replica does not lead any more ({exc}): retry")
    except (EtcdError, BackendUnavailable) as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"not recorded, nothing changed; try again: {exc}")
    except ControllerError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the controller refused: {exc}")
    raise AssertionError("abort returned")  # pragma: no cover


async def _audited(audit: Audit, action: str, principal: Principal, target: str, work: Awaitable[T]) -> T:
    """The caller's act on the audit trail: accepted (with the session) or refused (with why)."""
    try:
        result = await work
    except Exception as exc:
        audit.operator(action, principal.name, target, "refused", str(exc) or type(exc).__name__)
        raise
    sessions = result if isinstance(result, list) else [result]
    audit.operator(action, principal.name, target, "accepted",
                   "session " + ",".join(getattr(s, "id", "?") for s in sessions))
    return result


def _started(s: mpb.SessionInfo) -> bool:
    """A StateChange(maintenance) stream ends here: in maintenance, or over (rolled back, failed)."""
    return s.state in OVER or s.state == S.SESSION_STATE_IN_MAINTENANCE


def _ended(s: mpb.SessionInfo) -> bool:
    return s.state in OVER


def _settled(s: mpb.SessionInfo) -> bool:
    """Watch ends here: over, or in maintenance with nobody asking to end it."""
    return s.state in OVER or (s.state == S.SESSION_STATE_IN_MAINTENANCE and not s.ended_by)


class MaintenanceServicer(maintenance_pb2_grpc.MaintenanceServicer):
    def __init__(self, auth: TokenAuth, workflow: Workflow, gate: Gate) -> None:
        self.auth = auth
        self.workflow = workflow
        self.gate = gate  # require_leader: UNAVAILABLE with the leader's address on a follower

    async def StateChange(self, request: mpb.StateChangeRequest, context: grpc.aio.ServicerContext) -> None:
        principal = await self.auth.admin(context)
        await self.gate(context)
        states = {r.physical_resource_state for r in request.physical_resource_state}
        if states not in ({"maintenance"}, {"normal"}):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "physical_resource_state: list hosts that all go to 'maintenance' (start a session) "
                                f"or all back to 'normal' (end it); got {sorted(states) or 'no host'}")
        hosts = [r.physical_resource_id for r in request.physical_resource_state]
        audit = self.auth.audit
        if states == {"maintenance"}:
            sessions, done = [await _answer(context, self.gate, _audited(
                audit, "maintenance_start", principal, ",".join(hosts), self.workflow.start(principal, request)))], \
                _started
        else:
            sessions, done = await _answer(context, self.gate, _audited(
                audit, "maintenance_end" + ("_forced" if request.force else ""), principal, ",".join(hosts),
                self.workflow.end(principal, hosts, request.force))), _ended
        for s in sessions:
            await self._follow(context, s, done, "accepted")

    async def Retire(self, request: mpb.RetireRequest, context: grpc.aio.ServicerContext) -> None:
        principal = await self.auth.admin(context)
        await self.gate(context)
        s = await _answer(context, self.gate, _audited(self.auth.audit, "retire", principal,
                                                       ",".join(request.server_ids), self.workflow.retire(principal, request)))
        await self._follow(context, s, _ended, "accepted")

    async def Watch(self, request: mpb.WatchRequest, context: grpc.aio.ServicerContext) -> None:
        await self.auth.admin(context)
        await self.gate(context)
        s = self.workflow.sessions.get(request.session_id)
        if s is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no maintenance session {request.session_id!r} "
                                                           "(settled sessions are kept for a while, then forgotten)")
        await self._follow(context, s, _settled, "now")

    async def _follow(self, context: grpc.aio.ServicerContext, s: Session,
                      done: Callable[[mpb.SessionInfo], bool], first: str) -> None:
        """The session as it is, then every step until one is ``done`` (judged on the steps sent, not on the
        session, which may be ahead of them)."""
        try:
            queue = self.workflow.watch(s.id)
        except Refused as exc:
            await _refuse(context, exc)
        try:
            msg = self.workflow.progress(s, first)
            await context.write(msg)
            while not done(msg.session):
                msg = await queue.get()
                if msg is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        f"no longer following session {s.id} here (this replica stopped leading, or "
                                        "the stream fell behind): Watch it again, at the leader")
                await context.write(msg)
        finally:
            self.workflow.unwatch(s.id, queue)

    async def StateQuery(self, request: mpb.StateQueryRequest,
                         context: grpc.aio.ServicerContext) -> mpb.StateQueryResponse:
        await self.auth.admin(context)
        await self.gate(context)
        return mpb.StateQueryResponse(physical_resource_info=self.workflow.query(request.filter))

    async def Reply(self, request: mpb.MaintenanceReply,
                    context: grpc.aio.ServicerContext) -> mpb.MaintenanceReplyAck:
        principal = await self.auth.consumer(context)
        await self.gate(context)
        s = await _answer(context, self.gate, _audited(
            self.auth.audit, "maintenance_nack" if request.nack else "maintenance_reply", principal,
            request.session_id, self.workflow.reply(principal, request)))
        return mpb.MaintenanceReplyAck(session_id=s.id, state=s.state)

"""A small asyncio client for consumers and operators (doctorctl is built on it).

Given several endpoints (the inspector replicas), every call finds the one
that serves it (``doctor_common/failover.py``): it follows a follower's
``doctor-leader`` hint, moves on to the next endpoint when one cannot be
reached or says "try again", and gives up after one deadline per call
(``timeout``, else the client's ``deadline_s``) with ``Unreachable``, which
names every endpoint tried and why. With ``follow_leader=False`` a call is
made once, at the first endpoint, and its error is the server's.

``subscribe`` keeps a subscription alive across disconnects: it reconnects
with backoff and resumes after the last sequence it delivered (and names its
subscription, so a new leader recognises it), so a caller sees every
notification once, in order.

Maintenance: administrators start, follow, query and end sessions
(``maintenance_*``); a consumer answers the ``MaintenanceNotification`` it
receives on its subscription with ``reply``. A session's progress stream
that breaks once it has begun (its leader died) goes on with ``Watch`` at
the leader: the session itself goes on regardless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from doctor_common.api import (
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    fault_pb2,
    fault_pb2_grpc,
    maintenance_pb2,
    maintenance_pb2_grpc,
)
from doctor_common.failover import Endpoints, Unreachable, leader_hint, leader_trailer, pause_s
from doctor_common.grpcutil import auth_metadata
from doctor_common.timeline import Stage, now_ns, stamp
from doctor_common.grpc_tls import secure_channel
from doctor_common.tls import ClientTls

__all__ = ["DoctorClient", "Unreachable", "leader_hint"]

log = logging.getLogger("doctor.client")

# an established stream that ends with one of these is reconnected (resumed)
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED}
MAX_BATCH = 256  # notifications accepted in one Subscribe message (unpacked here; the inspector caps it at 1,000)
MAX_SESSION_RESUMES = 20  # a session's progress stream that broke this often is given up (Watch it again)


class DoctorClient:
    def __init__(self, endpoint: str | Sequence[str], token: str | None = None, *, deadline_s: float = 10.0,
                 connect_timeout_s: float = 2.0, follow_leader: bool = True, tls: ClientTls | None = None,
                 spread: bool = False) -> None:
        # spread: open the first stream at a replica drawn at random (consumers given every replica spread over
        # them); False: at the first listed, as gRPC's pick_first (a preferred, nearby replica first)
        self._eps = Endpoints([endpoint] if isinstance(endpoint, str) else endpoint, connect_timeout_s, tls, spread)
        self.endpoints = self._eps.configured
        self.token = token
        self.tls = tls  # None: plaintext (docs/tls.md)
        self.deadline_s = deadline_s
        self.follow_leader = follow_leader
        self._md = auth_metadata(token)
        self._streamed = False  # a stream was served (later ones reconnect where it was, or where sent)

    @property
    def endpoint(self) -> str:
        """The endpoint that served last (tried first)."""
        return self._eps.current

    @property
    def _channel(self) -> grpc.aio.Channel:
        return self._eps.channel()

    async def close(self) -> None:
        await self._eps.close()

    async def __aenter__(self) -> "DoctorClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(self, method: Callable[[grpc.aio.Channel], Any], request: Any, timeout: float | None,
                     at_leader: bool = False) -> Any:
        """``method(channel)(request)`` at the replica that serves it, within ``timeout`` (all attempts)."""
        async def attempt(channel: grpc.aio.Channel, left: float) -> Any:
            return await method(channel)(request, metadata=self._md, timeout=left)
        return await self._eps.call(attempt, timeout or self.deadline_s, follow=self.follow_leader,
                                    at_leader=at_leader, metadata=self._md)

    async def _stream(self, open_call: Callable[[grpc.aio.Channel], Any], max_backoff_s: float = 1.0
                      ) -> AsyncIterator[Any]:
        """A server stream opened at the replica that serves it: the deadline bounds the wait for its first
        message (a follower may hold a call while the election settles); after that it is the caller's."""
        async def attempt(channel: grpc.aio.Channel, left: float) -> tuple[Any, Any]:
            call = open_call(channel)
            try:
                async with asyncio.timeout(left):
                    return call, await call.read()
            except TimeoutError:
                call.cancel()
                raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "no first message in time") from None
            except BaseException:
                call.cancel()
                raise
        start = None if self._streamed else self._eps.streams_from  # the first stream, with spread: at random
        call, msg = await self._eps.call(attempt, self.deadline_s, follow=self.follow_leader,
                                         max_backoff_s=max_backoff_s, start=start)
        self._streamed = True
        try:
            while msg is not grpc.aio.EOF:
                yield msg
                msg = await call.read()
        finally:
            call.cancel()

    @property
    def faults(self) -> fault_pb2_grpc.FaultManagementStub:
        """The raw stub at the current endpoint (no failover)."""
        return fault_pb2_grpc.FaultManagementStub(self._channel)

    async def query_faults(self, flt: fault_pb2.FaultQueryFilter | None = None,
                           timeout: float | None = None) -> fault_pb2.FaultQueryResponse:
        return await self._unary(lambda ch: fault_pb2_grpc.FaultManagementStub(ch).QueryFaults,
                                 fault_pb2.FaultQueryRequest(filter=flt), timeout)

    async def server_host_status(self, server_id: str, timeout: float | None = None
                                 ) -> fault_pb2.ServerHostStatusResponse:
        return await self._unary(lambda ch: fault_pb2_grpc.FaultManagementStub(ch).GetServerHostStatus,
                                 fault_pb2.ServerHostStatusRequest(server_id=server_id), timeout)

    async def subscribe_once(self, flt: fault_pb2.SubscribeFilter | None = None, resume_after: int = 0,
                             subscription_id: str = "", max_backoff_s: float = 1.0, max_batch: int = MAX_BATCH
                             ) -> AsyncIterator[fault_pb2.SubscribeStreamMessage]:
        """One subscription stream, at the replica that serves it (errors once it began propagate).

        Notifications the inspector sends together (``max_batch``: a burst, a replay) are yielded one by one,
        each as the message it would have been alone: callers never see a batch."""
        req = fault_pb2.SubscribeRequest(filter=flt, resume_after=resume_after, subscription_id=subscription_id,
                                         max_batch=max_batch)
        async for msg in self._stream(lambda ch: fault_pb2_grpc.FaultManagementStub(ch).Subscribe(
                req, metadata=self._md), max_backoff_s):
            kind = msg.WhichOneof("kind")
            if kind == "batch":
                received = now_ns()
                for one in msg.batch.messages:
                    if one.WhichOneof("kind") == "fault":
                        stamp(one.fault.timeline, Stage.STAGE_DELIVERED, received)
                    yield one
                continue
            if kind == "fault":
                stamp(msg.fault.timeline, Stage.STAGE_DELIVERED, now_ns())
            yield msg

    async def subscribe(self, flt: fault_pb2.SubscribeFilter | None = None, resume_after: int = 0,
                        max_backoff_s: float = 2.0,
                        on_resync: Callable[[str], None] | None = None,
                        subscription_id: str = "") -> AsyncIterator[fault_pb2.SubscribeStreamMessage]:
        """Like subscribe_once, but reconnects and resumes; follows the leader hint of a follower.

        A consumer that restarts passes the cursor and the subscription id it kept: a recognised subscription is
        replayed what it missed even from ``resume_after=0`` (it subscribed before anything was logged), where a
        new one would start from now on.
        The first subscription must be served within the client's deadline (else ``Unreachable``); once it
        was, it reconnects for as long as the caller reads.

        It never gives up on a cursor the inspector cannot resume from (OUT_OF_RANGE: older than its retention,
        or beyond its log): it resynchronises with a new subscription, whose first message is a snapshot of
        everything the caller may see now, and calls ``on_resync`` with the reason. Notifications between the
        cursor and that snapshot are lost to the caller: treat the snapshot as the truth (the docs say more)."""
        cursor = resume_after
        backoff = 0.05
        served = False
        while True:
            refused: grpc.aio.AioRpcError | None = None
            try:
                async for msg in self.subscribe_once(flt, cursor, subscription_id, max_backoff_s):
                    served = True
                    kind = msg.WhichOneof("kind")
                    if kind == "fault":
                        cursor = msg.fault.sequence
                    elif kind == "maintenance":
                        cursor = msg.maintenance.sequence
                    else:
                        if msg.subscribed.subscription_id != subscription_id and cursor == 0:
                            # a new subscription starts at its snapshot; a resumed one replays from the cursor
                            cursor = msg.subscribed.last_sequence
                        subscription_id = msg.subscribed.subscription_id
                    backoff = 0.05
                    yield msg
            except Unreachable as exc:
                if not served:
                    raise
                log.info("subscription not resumed yet: %s", exc.details())
            except grpc.aio.AioRpcError as exc:
                refused = exc
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    log.warning("cannot resume after %d (%s): resynchronising with a new subscription and its "
                                "snapshot", cursor, exc.details())
                    if on_resync is not None:
                        on_resync(exc.details() or "")
                    cursor, subscription_id, backoff = 0, "", 0.05
                    continue
                if exc.code() not in _RETRYABLE:
                    raise
                before = self.endpoint
                self._eps.moved(exc)
                hint = leader_trailer(exc)
                if hint and hint != before:
                    continue  # sent to the leader: go at once
                log.info("subscription interrupted (%s); resuming after %d", exc.code().name, cursor)
            await asyncio.sleep(pause_s(backoff, refused))
            backoff = min(backoff * 2, max_backoff_s)

    # -- operators -----------------------------------------------------------------------------

    async def status(self, timeout: float | None = None, at_leader: bool = False) -> diagnostics_pb2.StatusReport:
        """A replica's own report (every replica answers); ``at_leader``: the leader's."""
        return await self._unary(lambda ch: diagnostics_pb2_grpc.DiagnosticsStub(ch).GetStatus,
                                 diagnostics_pb2.GetStatusRequest(), timeout, at_leader)

    async def timelines(self, limit: int = 10, timeout: float | None = None,
                        at_leader: bool = True) -> diagnostics_pb2.GetTimelinesResponse:
        """The last faults' timelines, the leader's (a follower has none of its own) unless ``at_leader=False``."""
        return await self._unary(lambda ch: diagnostics_pb2_grpc.DiagnosticsStub(ch).GetTimelines,
                                 diagnostics_pb2.GetTimelinesRequest(limit=limit), timeout, at_leader)

    async def hosts(self, timeout: float | None = None) -> diagnostics_pb2.ListHostsResponse:
        return await self._unary(lambda ch: diagnostics_pb2_grpc.HostsStub(ch).ListHosts,
                                 diagnostics_pb2.ListHostsRequest(), timeout)

    async def enable_host(self, host: str, timeout: float | None = None, force: bool = False
                          ) -> diagnostics_pb2.HostInfo:
        return await self._unary(lambda ch: diagnostics_pb2_grpc.HostsStub(ch).EnableHost,
                                 diagnostics_pb2.EnableHostRequest(host_id=host, force=force), timeout)

    # -- maintenance (doctor/v1/maintenance.proto) -------------------------------------------------

    @property
    def maintenance(self) -> maintenance_pb2_grpc.MaintenanceStub:
        """The raw stub at the current endpoint (no failover)."""
        return maintenance_pb2_grpc.MaintenanceStub(self._channel)

    async def _session(self, open_call: Callable[[maintenance_pb2_grpc.MaintenanceStub], Any]
                       ) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """A session's progress from ``open_call``; when the stream breaks after it began, the session is
        watched again at the leader (its next message is the session as it is then)."""
        stream = self._stream(lambda ch: open_call(maintenance_pb2_grpc.MaintenanceStub(ch)))
        session_id, resumes = "", 0
        while True:
            broke: grpc.aio.AioRpcError | None = None
            try:
                async for msg in stream:
                    session_id = msg.session.session_id
                    yield msg
                return
            except Unreachable:
                raise
            except grpc.aio.AioRpcError as exc:
                if not session_id or exc.code() not in _RETRYABLE or resumes >= MAX_SESSION_RESUMES:
                    raise
                broke = exc
            resumes += 1
            self._eps.moved(broke)
            log.info("lost session %s's progress (%s: %s); watching it again", session_id, broke.code().name,
                     broke.details())
            req = maintenance_pb2.WatchRequest(session_id=session_id)
            stream = self._stream(lambda ch: maintenance_pb2_grpc.MaintenanceStub(ch).Watch(req, metadata=self._md))

    def maintenance_start(self, hosts: Sequence[str], reason: str = "", reply_timeout_s: int = 0,
                          empty_timeout_s: int = 0, metadata: dict[str, str] | None = None
                          ) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: put ``hosts`` into maintenance; yields the session's progress until it is in
        maintenance, rolled back or failed (stop reading whenever: the session goes on)."""
        req = maintenance_pb2.StateChangeRequest(
            physical_resource_state=[maintenance_pb2.PhysicalResourceState(
                physical_resource_id=h, physical_resource_state="maintenance", metadata=metadata or {})
                for h in hosts],
            reason=reason, reply_timeout_s=reply_timeout_s, empty_timeout_s=empty_timeout_s)
        return self._session(lambda stub: stub.StateChange(req, metadata=self._md))

    def maintenance_end(self, hosts: Sequence[str], force: bool = False
                        ) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: back to normal (a session still in progress is cancelled: rolled back). Refused while
        a host's agent or BMC says it is not fit to serve, unless ``force``. (Ending hosts of several sessions,
        a break in the stream resumes only the session it was following.)"""
        req = maintenance_pb2.StateChangeRequest(force=force, physical_resource_state=[
            maintenance_pb2.PhysicalResourceState(physical_resource_id=h, physical_resource_state="normal")
            for h in hosts])
        return self._session(lambda stub: stub.StateChange(req, metadata=self._md))

    def retire(self, server_ids: Sequence[str], reason: str = "", reply_timeout_s: int = 0,
               empty_timeout_s: int = 0) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: VM retirement — ask the owners of these servers, move them off their hosts."""
        req = maintenance_pb2.RetireRequest(server_ids=list(server_ids), reason=reason,
                                            reply_timeout_s=reply_timeout_s, empty_timeout_s=empty_timeout_s)
        return self._session(lambda stub: stub.Retire(req, metadata=self._md))

    def maintenance_watch(self, session_id: str) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        req = maintenance_pb2.WatchRequest(session_id=session_id)
        return self._session(lambda stub: stub.Watch(req, metadata=self._md))

    async def maintenance_query(self, hosts: Sequence[str] = (), state: str = "", zone: str = "",
                                timeout: float | None = None) -> maintenance_pb2.StateQueryResponse:
        flt = maintenance_pb2.StateQueryFilter(physical_resource_id=list(hosts), physical_resource_state=state,
                                               zone_id=zone)
        return await self._unary(lambda ch: maintenance_pb2_grpc.MaintenanceStub(ch).StateQuery,
                                 maintenance_pb2.StateQueryRequest(filter=flt), timeout)

    async def reply(self, session_id: str, instructions: dict[str, int | tuple[int, str]] | None = None,
                    nack: bool = False, reason: str = "", timeout: float | None = None
                    ) -> maintenance_pb2.MaintenanceReplyAck:
        """Consumers: answer a MaintenanceNotification. ``instructions``: server id → ``Instruction`` (or
        ``(Instruction, target_host)``), one for each of your servers it lists; or ``nack=True``."""
        items = []
        for server_id, how in (instructions or {}).items():
            kind, target = how if isinstance(how, tuple) else (how, "")
            items.append(maintenance_pb2.ServerInstruction(server_id=server_id, instruction=kind, target_host=target))
        return await self._unary(lambda ch: maintenance_pb2_grpc.MaintenanceStub(ch).Reply,
                                 maintenance_pb2.MaintenanceReply(session_id=session_id, instructions=items,
                                                                  nack=nack, reason=reason), timeout)

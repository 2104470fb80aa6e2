"""A small asyncio client for consumers and operators (doctorctl is built on it).

``subscribe`` keeps a subscription alive across disconnects: it reconnects
with backoff and resumes after the last sequence it delivered (and names its
subscription, so a new leader recognises it), so a caller sees every
notification once, in order. Given several endpoints (the inspector
replicas), it follows a follower's ``doctor-leader`` hint and otherwise moves
on to the next endpoint when the current one fails.

Maintenance: administrators start, follow, query and end sessions
(``maintenance_*``); a consumer answers the ``MaintenanceNotification`` it
receives on its subscription with ``reply``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from doctor_common.api import (
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    fault_pb2,
    fault_pb2_grpc,
    maintenance_pb2,
    maintenance_pb2_grpc,
)
from doctor_common.grpcutil import auth_metadata, channel_options
from doctor_common.timeline import Stage, now_ns, stamp
from doctor_common.tls import ClientTls, secure_channel

log = logging.getLogger("doctor.client")

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED,
              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED}


def leader_hint(exc: grpc.aio.AioRpcError) -> str | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "doctor-leader" and value:
            return str(value)
    return None


class DoctorClient:
    def __init__(self, endpoint: str | Sequence[str], token: str | None = None, tls: ClientTls | None = None) -> None:
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self.endpoint = self.endpoints[0]
        self.token = token
        self.tls = tls  # None: plaintext (docs/tls.md)
        self._channel = secure_channel(self.endpoint, tls, channel_options())
        self._md = auth_metadata(token)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "DoctorClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _switch(self, endpoint: str) -> None:
        old = self._channel
        self.endpoint = endpoint
        self._channel = secure_channel(endpoint, self.tls, channel_options())
        await old.close()

    async def _next_endpoint(self) -> None:
        """The current endpoint failed without naming a leader: try the next replica."""
        if len(self.endpoints) > 1:
            i = self.endpoints.index(self.endpoint) if self.endpoint in self.endpoints else -1
            await self._switch(self.endpoints[(i + 1) % len(self.endpoints)])

    @property
    def faults(self) -> fault_pb2_grpc.FaultManagementStub:
        return fault_pb2_grpc.FaultManagementStub(self._channel)

    async def query_faults(self, flt: fault_pb2.FaultQueryFilter | None = None,
                           timeout: float = 10.0) -> fault_pb2.FaultQueryResponse:
        return await self.faults.QueryFaults(fault_pb2.FaultQueryRequest(filter=flt), metadata=self._md, timeout=timeout)

    async def server_host_status(self, server_id: str, timeout: float = 10.0) -> fault_pb2.ServerHostStatusResponse:
        return await self.faults.GetServerHostStatus(fault_pb2.ServerHostStatusRequest(server_id=server_id),
                                                     metadata=self._md, timeout=timeout)

    async def subscribe_once(self, flt: fault_pb2.SubscribeFilter | None = None, resume_after: int = 0,
                             subscription_id: str = "") -> AsyncIterator[fault_pb2.SubscribeStreamMessage]:
        """One subscription stream, as the server sends it (errors propagate)."""
        call = self.faults.Subscribe(fault_pb2.SubscribeRequest(filter=flt, resume_after=resume_after,
                                                                subscription_id=subscription_id),
                                     metadata=self._md)
        try:
            async for msg in call:
                if msg.WhichOneof("kind") == "fault":
                    stamp(msg.fault.timeline, Stage.STAGE_DELIVERED, now_ns())
                yield msg
        finally:
            call.cancel()

    async def subscribe(self, flt: fault_pb2.SubscribeFilter | None = None, resume_after: int = 0,
                        max_backoff_s: float = 2.0,
                        on_resync: Callable[[str], None] | None = None) -> AsyncIterator[fault_pb2.SubscribeStreamMessage]:
        """Like subscribe_once, but reconnects and resumes; follows the leader hint of a follower.

        It never gives up on a cursor the inspector cannot resume from (OUT_OF_RANGE: older than its retention,
        or beyond its log): it resynchronises with a new subscription, whose first message is a snapshot of
        everything the caller may see now, and calls ``on_resync`` with the reason. Notifications between the
        cursor and that snapshot are lost to the caller: treat the snapshot as the truth (the docs say more)."""
        cursor = resume_after
        subscription_id = ""
        backoff = 0.05
        while True:
            try:
                async for msg in self.subscribe_once(flt, cursor, subscription_id):
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
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    log.warning("cannot resume after %d (%s): resynchronising with a new subscription and its "
                                "snapshot", cursor, exc.details())
                    if on_resync is not None:
                        on_resync(exc.details() or "")
                    cursor, subscription_id, backoff = 0, "", 0.05
                    continue
                if exc.code() not in _RETRYABLE:
                    raise
                leader = leader_hint(exc)
                if leader and leader != self.endpoint:
                    await self._switch(leader)
                    continue
                if not leader:  # a hint naming this endpoint: it is about to lead, stay
                    await self._next_endpoint()
                log.info("subscription interrupted (%s); resuming after %d", exc.code().name, cursor)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)

    # -- operators -----------------------------------------------------------------------------

    async def status(self, timeout: float = 10.0) -> diagnostics_pb2.StatusReport:
        stub = diagnostics_pb2_grpc.DiagnosticsStub(self._channel)
        return await stub.GetStatus(diagnostics_pb2.GetStatusRequest(), metadata=self._md, timeout=timeout)

    async def timelines(self, limit: int = 10, timeout: float = 10.0) -> diagnostics_pb2.GetTimelinesResponse:
        stub = diagnostics_pb2_grpc.DiagnosticsStub(self._channel)
        return await stub.GetTimelines(diagnostics_pb2.GetTimelinesRequest(limit=limit), metadata=self._md,
                                       timeout=timeout)

    async def hosts(self, timeout: float = 10.0) -> diagnostics_pb2.ListHostsResponse:
        stub = diagnostics_pb2_grpc.HostsStub(self._channel)
        return await stub.ListHosts(diagnostics_pb2.ListHostsRequest(), metadata=self._md, timeout=timeout)

    async def enable_host(self, host: str, timeout: float = 10.0, force: bool = False) -> diagnostics_pb2.HostInfo:
        stub = diagnostics_pb2_grpc.HostsStub(self._channel)
        return await stub.EnableHost(diagnostics_pb2.EnableHostRequest(host_id=host, force=force), metadata=self._md,
                                     timeout=timeout)

    # -- maintenance (doctor/v1/maintenance.proto) -------------------------------------------------

    @property
    def maintenance(self) -> maintenance_pb2_grpc.MaintenanceStub:
        return maintenance_pb2_grpc.MaintenanceStub(self._channel)

    async def maintenance_start(self, hosts: Sequence[str], reason: str = "", reply_timeout_s: int = 0,
                                empty_timeout_s: int = 0, metadata: dict[str, str] | None = None
                                ) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: put ``hosts`` into maintenance; yields the session's progress until it is in
        maintenance, rolled back or failed (stop reading whenever: the session goes on)."""
        req = maintenance_pb2.StateChangeRequest(
            physical_resource_state=[maintenance_pb2.PhysicalResourceState(
                physical_resource_id=h, physical_resource_state="maintenance", metadata=metadata or {})
                for h in hosts],
            reason=reason, reply_timeout_s=reply_timeout_s, empty_timeout_s=empty_timeout_s)
        async for msg in self.maintenance.StateChange(req, metadata=self._md):
            yield msg

    async def maintenance_end(self, hosts: Sequence[str], force: bool = False
                              ) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: back to normal (a session still in progress is cancelled: rolled back). Refused while
        a host's agent or BMC says it is not fit to serve, unless ``force``."""
        req = maintenance_pb2.StateChangeRequest(force=force, physical_resource_state=[
            maintenance_pb2.PhysicalResourceState(physical_resource_id=h, physical_resource_state="normal")
            for h in hosts])
        async for msg in self.maintenance.StateChange(req, metadata=self._md):
            yield msg

    async def retire(self, server_ids: Sequence[str], reason: str = "", reply_timeout_s: int = 0,
                     empty_timeout_s: int = 0) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        """Administrators: VM retirement — ask the owners of these servers, move them off their hosts."""
        req = maintenance_pb2.RetireRequest(server_ids=list(server_ids), reason=reason,
                                            reply_timeout_s=reply_timeout_s, empty_timeout_s=empty_timeout_s)
        async for msg in self.maintenance.Retire(req, metadata=self._md):
            yield msg

    async def maintenance_watch(self, session_id: str) -> AsyncIterator[maintenance_pb2.MaintenanceProgress]:
        async for msg in self.maintenance.Watch(maintenance_pb2.WatchRequest(session_id=session_id),
                                                metadata=self._md):
            yield msg

    async def maintenance_query(self, hosts: Sequence[str] = (), state: str = "", zone: str = "",
                                timeout: float = 10.0) -> maintenance_pb2.StateQueryResponse:
        flt = maintenance_pb2.StateQueryFilter(physical_resource_id=list(hosts), physical_resource_state=state,
                                               zone_id=zone)
        return await self.maintenance.StateQuery(maintenance_pb2.StateQueryRequest(filter=flt), metadata=self._md,
                                                 timeout=timeout)

    async def reply(self, session_id: str, instructions: dict[str, int | tuple[int, str]] | None = None,
                    nack: bool = False, reason: str = "", timeout: float = 10.0) -> maintenance_pb2.MaintenanceReplyAck:
        """Consumers: answer a MaintenanceNotification. ``instructions``: server id → ``Instruction`` (or
        ``(Instruction, target_host)``), one for each of your servers it lists; or ``nack=True``."""
        items = []
        for server_id, how in (instructions or {}).items():
            kind, target = how if isinstance(how, tuple) else (how, "")
            items.append(maintenance_pb2.ServerInstruction(server_id=server_id, instruction=kind, target_host=target))
        return await self.maintenance.Reply(maintenance_pb2.MaintenanceReply(
            session_id=session_id, instructions=items, nack=nack, reason=reason), metadata=self._md, timeout=timeout)


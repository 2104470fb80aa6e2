"""Diagnostics (for SREs) and Hosts (administrators' host operations); both need an admin token.

Every replica answers Diagnostics (a follower with its role and the leader's
endpoint); Hosts is the leader's (a follower answers UNAVAILABLE with the
``doctor-leader`` trailer).
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from google.protobuf.internal import api_implementation

from controller_adapter.base import Controller, ControllerError
from doctor_common import __version__
from doctor_common.api import diagnostics_pb2, diagnostics_pb2_grpc
from doctor_common.auth import TokenAuth
from inspector.response.alarms import AlarmStore
from inspector.response.correlate import ResourceMap
from inspector.response.responder import Responder
from inspector.southbound.liveness import Liveness
from notifier.registry import Registry
from notifier.subscriptions import SubscriptionBook


class Named(Protocol):
    @property
    def node_id(self) -> str: ...


class Replica(Protocol):
    """What Diagnostics and Hosts read of the inspector replica that serves them (``inspector/core.py``)."""

    @property
    def cfg(self) -> Named: ...
    @property
    def auth(self) -> TokenAuth: ...
    @property
    def role(self) -> str: ...
    @property
    def started_ns(self) -> int: ...
    @property
    def controller(self) -> Controller: ...
    @property
    def liveness(self) -> Liveness: ...
    @property
    def alarms(self) -> AlarmStore: ...
    @property
    def resources(self) -> ResourceMap: ...
    @property
    def responder(self) -> Responder: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def book(self) -> SubscriptionBook: ...
    @property
    def log(self) -> Any: ...

    def leader_endpoint(self) -> str | None: ...

    def leader_token(self) -> int: ...

    def guard_status(self) -> diagnostics_pb2.GuardStatus: ...

    async def enable_blockers(self, host: str) -> list[str]: ...

    def resync(self, host: str) -> None: ...

    async def require_leader(self, context: grpc.aio.ServicerContext, key: str = "") -> None: ...


class DiagnosticsServicer(diagnostics_pb2_grpc.DiagnosticsServicer):
    def __init__(self, inspector: Replica) -> None:
        self.i = inspector

    async def GetStatus(self, request: diagnostics_pb2.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> diagnostics_pb2.StatusReport:
        await self.i.auth.admin(context)
        i = self.i
        return diagnostics_pb2.StatusReport(
            node_id=i.cfg.node_id, role=i.role, leader_endpoint=i.leader_endpoint() or "", version=__version__,
            started_unix_nanos=i.started_ns, protobuf_implementation=api_implementation.Type(),
            controller=i.controller.name,
            agents=[diagnostics_pb2.AgentInfo(
                host_id=r.host_id, connected=r.connected, liveness=r.liveness, boot_id=r.boot_id,
                agent_version=r.agent_version, last_seen_unix_nanos=r.last_seen_ns, peer=r.peer,
                last_sequence=r.last_sequence, components=list(r.components.values()), health=r.health)
                for r in sorted(i.liveness.hosts.values(), key=lambda r: r.host_id)],
            active_alarms=[a.fault for a in i.alarms],
            subscriptions=[diagnostics_pb2.SubscriptionInfo(
                subscription_id=s.id, principal=s.principal.name, queue_depth=s.depth, delivered=s.delivered,
                connected=True, last_delivered=s.last_delivered) for s in i.registry] + [
                diagnostics_pb2.SubscriptionInfo(subscription_id=r.id, principal=r.name, connected=False,
                                                 last_delivered=r.last_delivered) for r in i.book.detached()],
            last_sequence=i.log.last_sequence, leader_token=i.leader_token(), guard=i.guard_status())

    async def GetTimelines(self, request: diagnostics_pb2.GetTimelinesRequest,
                           context: grpc.aio.ServicerContext) -> diagnostics_pb2.GetTimelinesResponse:
        await self.i.auth.admin(context)
        limit = request.limit or 10
        return diagnostics_pb2.GetTimelinesResponse(timelines=list(self.i.responder.timelines)[:limit])


class HostsServicer(diagnostics_pb2_grpc.HostsServicer):
    def __init__(self, inspector: Replica) -> None:
        self.i = inspector

    def _info(self, host: str) -> diagnostics_pb2.HostInfo:
        i = self.i
        h = i.resources.hosts[host]
        rec = i.liveness.hosts.get(host)
        return diagnostics_pb2.HostInfo(
            host_id=host, host_status=i.responder.host_status(host), forced_down=h.forced_down, disabled=h.disabled,
            disabled_reason=h.disabled_reason, liveness=rec.liveness if rec else "unknown",
            servers=len(i.resources.servers_on(host)), active_alarms=[a.fault for a in i.alarms.on_host(host)])

    async def ListHosts(self, request: diagnostics_pb2.ListHostsRequest,
                        context: grpc.aio.ServicerContext) -> diagnostics_pb2.ListHostsResponse:
        await self.i.auth.admin(context)
        await self.i.require_leader(context)
        return diagnostics_pb2.ListHostsResponse(hosts=[self._info(h) for h in sorted(self.i.resources.hosts)])

    async def EnableHost(self, request: diagnostics_pb2.EnableHostRequest,
                         context: grpc.aio.ServicerContext) -> diagnostics_pb2.HostInfo:
        principal = await self.i.auth.admin(context)
        audit = self.i.auth.audit
        host, how = request.host_id, "forced" if request.force else ""
        if request.host_id not in self.i.resources.hosts:
            audit.operator("enable_host", principal.name, host, "refused", "not in the inventory")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"host {request.host_id!r} is not in the inventory")
        await self.i.require_leader(context)
        if not request.force:
            wrong = await self.i.enable_blockers(request.host_id)
            if wrong:
                audit.operator("enable_host", principal.name, host, "refused", "; ".join(wrong))
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"host {request.host_id} is not ready to serve again: {'; '.join(wrong)}. "
                                    "Repair it first (docs/fleet-safety.md, \"Bringing a fenced host back\"), or "
                                    "enable it with force if you know better")
        try:
            cleared = await self.i.responder.enable_host(request.host_id)
        except ControllerError as exc:
            audit.operator("enable_host", principal.name, host, "failed", f"controller refused: {exc}")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"controller refused: {exc}")
        audit.operator("enable_host", principal.name, host, "done",
                       ", ".join(filter(None, [how, f"{len(cleared)} alarms cleared"])))
        self.i.resync(request.host_id)
        return self._info(request.host_id)

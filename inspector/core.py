"""The inspector: wires liveness, policy, resources, fencing, alarms and the notifier, and serves gRPC."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from controller_adapter.base import NotFound, ServerState
from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2, diagnostics_pb2_grpc, fault_pb2_grpc
from doctor_common.auth import Principal
from doctor_common.grpcutil import DecodeErrorInterceptor, add_health_and_reflection, server_options
from doctor_common.timeline import now_ns
from inspector.actions import HOST_STATUS_PROTO, Responder, Trigger
from inspector.alarms import AlarmStore
from inspector.config import InspectorConfig
from inspector.correlate import ResourceMap
from inspector.diagnostics import DiagnosticsServicer, HostsServicer
from inspector.fencing import IpmiFencer
from inspector.gateway import FAULTY, AgentGatewayServicer
from inspector.liveness import AGENT_DOWN, STOPPED, UNREACHABLE, UP, HostRecord, Liveness
from notifier.log import MemoryLog, NotificationLog
from notifier.registry import Registry
from notifier.server import FaultManagementServicer, Publisher

log = logging.getLogger("doctor.inspector")

SERVICES = ("doctor.v1.AgentGateway", "doctor.v1.FaultManagement", "doctor.v1.Diagnostics", "doctor.v1.Hosts")


class Inspector:
    """One inspector replica. Standalone (no etcd) it is always the leader."""

    def __init__(self, cfg: InspectorConfig, notification_log: NotificationLog | None = None) -> None:
        self.cfg = cfg
        self.auth = cfg.auth
        self.controller = cfg.controller
        self.role = "standalone"
        self.started_ns = now_ns()
        self.resources = ResourceMap(self.controller, cfg.resource_refresh_s)
        self.alarms = AlarmStore()
        self.registry = Registry(cfg.queue_limit)
        self.log = notification_log or MemoryLog(cfg.retention)
        self.publisher = Publisher(self.log, self.registry)
        self.fencer = IpmiFencer(cfg.fencing_timeout_s, cfg.fencing_poll_s, retry_s=cfg.fencing_retry_s)
        self.responder = Responder(cfg.policy, self.resources, self.controller, self.fencer, self.alarms,
                                   self.publisher, cfg.bmcs)
        self.liveness = Liveness(cfg.liveness_timeout_s, self._liveness_changed)
        self.server: grpc.aio.Server | None = None
        self.ports: list[int] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []

    # -- leadership seam: standalone today, etcd election plugs in here ------------------------

    def leader_endpoint(self) -> str | None:
        return None

    async def require_leader(self, context: grpc.aio.ServicerContext) -> None:
        if self.role not in ("leader", "standalone"):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader",
                                trailing_metadata=(("doctor-leader", self.leader_endpoint() or ""),))

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.resources.load()
        for host in self.resources.hosts:
            bmc = self.responder.bmc_for(host)
            if bmc is not None:
                self._spawn(self.fencer.warm(bmc), f"warm BMC of {host}")
        server = grpc.aio.server(options=server_options(), interceptors=[DecodeErrorInterceptor()])
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(AgentGatewayServicer(
            self.auth, self.liveness, self.resources.ensure_host, self._on_state,
            self.cfg.heartbeat_interval_ms, self.leader_endpoint), server)
        fault_pb2_grpc.add_FaultManagementServicer_to_server(
            FaultManagementServicer(self.auth, self, self.log, self.registry), server)
        diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server(DiagnosticsServicer(self), server)
        diagnostics_pb2_grpc.add_HostsServicer_to_server(HostsServicer(self), server)
        await add_health_and_reflection(server, SERVICES)
        for address in self.cfg.listen:
            port = server.add_insecure_port(address)
            if port == 0 and not address.startswith("unix:"):
                raise OSError(f"cannot listen on {address}")
            self.ports.append(port)
        await server.start()
        self.server = server
        self._loops = [asyncio.create_task(self.liveness.watch(), name="liveness"),
                       asyncio.create_task(self.resources.refresh_forever(), name="resources")]
        log.warning("standalone mode: one inspector, state in this process only: NOT highly available")
        log.info("inspector %s serving on %s", self.cfg.node_id, ", ".join(self.cfg.listen))

    async def stop(self, grace: float = 1.0) -> None:
        for t in [*self._loops, *self._tasks]:
            t.cancel()
        await asyncio.gather(*self._loops, *self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(grace)
        await self.fencer.close()
        await self.controller.close()

    def dead_loop(self) -> asyncio.Task[Any] | None:
        """A main loop that ended: the daemon must exit so systemd restarts it."""
        return next((t for t in self._loops if t.done()), None)

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())
        task.add_done_callback(done)

    # -- from the agents -----------------------------------------------------------------------

    def _on_state(self, rec: HostRecord, state: agent_pb2.ComponentState, trigger: Trigger) -> None:
        if state.status in FAULTY and state.fault_type:
            self._spawn(self.responder.fault(trigger), f"response to {trigger.fault_type} on {rec.host_id}")
        elif state.status == agent_pb2.COMPONENT_STATUS_OK:
            self._spawn(self.responder.clear(rec.host_id, state.component), f"clearing {state.component}")

    async def _liveness_changed(self, rec: HostRecord, old: str, new: str) -> None:
        now = now_ns()
        if new == UNREACHABLE:
            self._spawn(self.responder.fault(Trigger(
                rec.host_id, "compute.host.unreachable", common_pb2.SEVERITY_CRITICAL, component="agent",
                description=f"no message from the agent for {self.cfg.liveness_timeout_s * 1000:.0f} ms",
                details={"last_seen_unix_nanos": str(rec.last_seen_ns)}, observed_ns=now, received_ns=now)),
                f"unreachable {rec.host_id}")
        elif new == AGENT_DOWN:
            self._spawn(self.responder.fault(Trigger(
                rec.host_id, "compute.host.agent.down", common_pb2.SEVERITY_MAJOR, component="agent",
                description="the agent's stream was closed by its host: agent died, host alive",
                observed_ns=now, received_ns=now)), f"agent down {rec.host_id}")
        elif new in (UP, STOPPED) and old in (AGENT_DOWN, UNREACHABLE, STOPPED):
            self._spawn(self.responder.clear(rec.host_id, "agent"), f"agent back {rec.host_id}")

    # -- FaultState for the notifier -----------------------------------------------------------

    def _virtual(self, visible: Any) -> list[common_pb2.VirtualResourceInfo]:
        faults = self.alarms.faults_by_resource()
        out = []
        for s in self.resources.servers.values():
            if visible(s.project_id):
                out.append(common_pb2.VirtualResourceInfo(
                    virtual_resource_id=s.id, virtual_resource_type="server", project_id=s.project_id,
                    virtual_resource_state="error" if s.state == ServerState.ERROR else "normal",
                    physical_resource_id=s.host, faults=faults.get(s.id, []),
                    host_status=self.responder.host_status(s.host)))
        for p in self.resources.ports.values():
            if visible(p.project_id):
                out.append(common_pb2.VirtualResourceInfo(
                    virtual_resource_id=p.id, virtual_resource_type="port", project_id=p.project_id,
                    virtual_resource_state="down" if p.data_plane_status == "DOWN" else "normal",
                    physical_resource_id=p.host, faults=faults.get(p.id, []),
                    host_status=self.responder.host_status(p.host)))
        return out

    def _physical(self) -> list[common_pb2.PhysicalResourceInfo]:
        return [common_pb2.PhysicalResourceInfo(
            physical_resource_id=h.name, physical_resource_state=self.responder.host_state(h.name), zone_id=h.zone,
            host_status=self.responder.host_status(h.name), faults=[a.fault for a in self.alarms.on_host(h.name)])
            for h in self.resources.hosts.values()]

    async def visible_resources(self, principal: Principal) -> tuple[list[common_pb2.VirtualResourceInfo],  # type: ignore[override]
                                                             list[common_pb2.PhysicalResourceInfo]]:
        return self._virtual(principal.owns), self._physical() if principal.admin else []

    def active(self) -> tuple[list[common_pb2.VirtualResourceInfo], list[common_pb2.PhysicalResourceInfo]]:
        virtual = [v for v in self._virtual(lambda _p: True) if v.faults]
        return virtual, [p for p in self._physical() if p.faults]

    async def owner_of(self, resource_id: str) -> str | None:
        return self.resources.owner_of(resource_id)

    async def server_host_status(self, server_id: str) -> tuple[str, int] | None:
        s = self.resources.servers.get(server_id)
        if s is None:
            try:
                host, status = await self.controller.server_host_status(server_id)
            except NotFound:
                return None
            return host, HOST_STATUS_PROTO[status]
        return s.host, self.responder.host_status(s.host)

"""What consumers see of the world (the notifier's ``FaultState``): resources with their state and faults."""

from __future__ import annotations

from typing import Any

from controller_adapter.base import Controller, NotFound, ServerState
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from inspector.response.alarms import AlarmStore
from inspector.response.correlate import ResourceMap
from inspector.response.responder import HOST_STATUS_PROTO, Responder


class FaultView:
    def __init__(self, resources: ResourceMap, alarms: AlarmStore, responder: Responder,
                 controller: Controller) -> None:
        self.resources = resources
        self.alarms = alarms
        self.responder = responder
        self.controller = controller

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

    def follow(self, n: fault_pb2.FaultNotification) -> None:
        """A replica that does not lead learns from each notification it relays what the leader changed in the
        controller (servers in error, ports down, hosts forced down or disabled); the resource map's periodic
        refresh corrects anything else."""
        errored, normal, down, up = [], [], [], []
        for v in n.virtual_resource_info:
            if v.virtual_resource_type == "server":
                s = self.resources.servers.get(v.virtual_resource_id)
                if v.virtual_resource_state == "error":
                    errored.append(v.virtual_resource_id)
                elif s is not None and s.state == ServerState.ERROR:
                    normal.append(v.virtual_resource_id)
            elif v.virtual_resource_type == "port":
                (down if v.virtual_resource_state == "down" else up).append(v.virtual_resource_id)
        self.resources.set_servers_state(errored, ServerState.ERROR)
        self.resources.set_servers_state(normal, ServerState.ACTIVE)
        self.resources.set_ports_status(down, "DOWN")
        self.resources.set_ports_status([p for p in up if p in self.resources.ports
                                         and self.resources.ports[p].data_plane_status == "DOWN"], "ACTIVE")
        for p in n.physical_resource_info:
            state = p.physical_resource_state
            if state in ("down", "error", "maintenance", "normal"):
                changes: dict[str, object] = {"forced_down": state == "down"}
                if state in ("maintenance", "normal"):
                    changes["disabled"] = state == "maintenance"
                self.resources.set_host(p.physical_resource_id, **changes)

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

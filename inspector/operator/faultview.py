"""What consumers see of the world (the notifier's ``FaultState``): resources with their state and faults."""

from __future__ import annotations

from typing import Any

from controller_adapter.base import Controller, NotFound, ServerState
from doctor_common.api import common_pb2
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

"""The cached resource map: hosts, their servers and ports, with owners (the seeds' inspector guideline).

Listing a host's servers from the controller at fault time is what made the
reference pipeline slow with 50 VMs; here the map is loaded at start,
refreshed in the background, and patched locally when we change state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from controller_adapter.base import Controller, Host, NotFound, Port, Server, ServerState

log = logging.getLogger("doctor.inspector.resources")


class ResourceMap:
    def __init__(self, controller: Controller, refresh_s: float = 30.0) -> None:
        self.controller = controller
        self.refresh_s = refresh_s
        self.hosts: dict[str, Host] = {}
        self.servers: dict[str, Server] = {}
        self.ports: dict[str, Port] = {}
        self._by_host: dict[str, set[str]] = {}
        self._ports_by_host: dict[str, set[str]] = {}
        self.loaded_at = 0.0

    async def load(self) -> None:
        """Read the whole map and swap it in at once. The maps and indexes are built in a worker thread: at
        thousands of hosts that is hundreds of milliseconds the event loop (and liveness) must not wait."""
        hosts, servers, ports = await asyncio.gather(self.controller.list_hosts(), self.controller.list_servers(),
                                                     self.controller.list_ports())
        built = await asyncio.to_thread(_build, hosts, servers, ports)
        self.hosts, self.servers, self.ports, self._by_host, self._ports_by_host = built
        self.loaded_at = time.monotonic()
        log.info("resource map: %d hosts, %d servers, %d ports", len(hosts), len(servers), len(ports))

    def _index(self) -> None:
        self._by_host, self._ports_by_host = _index(self.servers, self.ports)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.load()
            except Exception as exc:  # noqa: BLE001 - keep serving the last good map
                log.warning("resource map refresh failed, keeping the cached one: %s", exc)

    def has_host(self, host: str) -> bool:
        return host in self.hosts

    async def ensure_host(self, host: str) -> Host:
        """The host, asking the controller when the cache does not know it yet (a newly added host)."""
        if host in self.hosts:
            return self.hosts[host]
        h = await self.controller.get_host(host)  # NotFound propagates
        self.hosts[host] = h
        for s in await self.controller.servers_on_host(host):
            self.servers[s.id] = s
        for p in await self.controller.ports_on_host(host):
            self.ports[p.id] = p
        self._index()
        return h

    def servers_on(self, host: str) -> list[Server]:
        return [self.servers[i] for i in sorted(self._by_host.get(host, ()))]

    def ports_on(self, host: str) -> list[Port]:
        return [self.ports[i] for i in sorted(self._ports_by_host.get(host, ()))]

    def server_of(self, host: str, uuid: str = "", domain: str = "") -> Server | None:
        """The server of a libvirt domain on ``host``: by its uuid (Nova's instance id is the domain's) or by the
        domain name the inventory gives it."""
        for s in self.servers_on(host):
            if (uuid and s.id.lower() == uuid.lower()) or (domain and s.domain == domain):
                return s
        return None

    def owner_of(self, resource_id: str) -> str | None:
        if resource_id in self.servers:
            return self.servers[resource_id].project_id
        if resource_id in self.ports:
            return self.ports[resource_id].project_id
        return None

    def set_host(self, host: str, **changes: object) -> None:
        if host in self.hosts:
            self.hosts[host] = dataclasses.replace(self.hosts[host], **changes)  # type: ignore[arg-type]

    def set_servers_state(self, ids: list[str], state: ServerState) -> None:
        for sid in ids:
            if sid in self.servers:
                self.servers[sid] = dataclasses.replace(self.servers[sid], state=state)

    def set_ports_status(self, ids: list[str], status: str) -> None:
        for pid in ids:
            if pid in self.ports:
                self.ports[pid] = dataclasses.replace(self.ports[pid], data_plane_status=status)


def _index(servers: dict[str, Server], ports: dict[str, Port]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    by_host: dict[str, set[str]] = {}
    for s in servers.values():
        by_host.setdefault(s.host, set()).add(s.id)
    ports_by_host: dict[str, set[str]] = {}
    for p in ports.values():
        ports_by_host.setdefault(p.host, set()).add(p.id)
    return by_host, ports_by_host


def _build(hosts: list[Host], servers: list[Server], ports: list[Port]) -> tuple[
        dict[str, Host], dict[str, Server], dict[str, Port], dict[str, set[str]], dict[str, set[str]]]:
    by_id = {s.id: s for s in servers}
    ports_by_id = {p.id: p for p in ports}
    return ({h.name: h for h in hosts}, by_id, ports_by_id, *_index(by_id, ports_by_id))


__all__ = ["NotFound", "ResourceMap"]

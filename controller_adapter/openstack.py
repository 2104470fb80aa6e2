"""The OpenStack backend: the ``Controller`` interface on a real cloud, through openstacksdk.

What each operation sends (compute microversion negotiated by the SDK, capped per resource)::

    list_hosts / get_host      GET  /os-services?binary=nova-compute[&host=H]
    list_hosts (topology)      GET  /os-aggregates                 (switch: metadata doctor_switch of a host's aggregate)
    force_down (>= 2.53)       PUT  /os-services/{uuid}            {"forced_down": true|false}
               (2.11 - 2.52)   PUT  /os-services/force-down        {"host", "binary", "forced_down"}
    set_disabled (>= 2.53)     PUT  /os-services/{uuid}            {"status": "disabled", "disabled_reason"} / {"status": "enabled"}
                 (< 2.53)      PUT  /os-services/disable-log-reason | /disable | /enable
    servers_on_host            GET  /servers/detail?host=H&all_tenants=True   (paginated)
    list_servers               GET  /servers/detail?all_tenants=True[&project_id=P]
    reset_servers_state        POST /servers/{id}/action           {"os-resetState": {"state": "error"}}  one per server, concurrently
    server_host_status         GET  /servers/{id}                  (host_status from 2.16)
    migrate_server             GET  /servers/{id}, GET /os-services, then POST os-migrateLive | migrate | evacuate
                               (cold, or wait=True: GET /os-migrations?instance_uuid= until it ends; confirmResize)
    set_servers_running        GET  /servers/{id}, then POST os-stop | os-start (unless so already or under way)
    settle_migrations          GET  /os-migrations?host=H, POST confirmResize per finished cold migration
    host_is_empty              GET  /os-services, /servers/detail?host=H, /os-migrations?host=H   concurrently
    ports_on_host              GET  /v2.0/ports?binding:host_id=H
    list_ports                 GET  /v2.0/ports                    (paginated; ports bound to no host left out)
    set_ports_data_plane_status GET /v2.0/extensions/data-plane-status (cached), PUT /v2.0/ports/{id} per port

The fault path's writes (force-down with a known service uuid, os-resetState, data_plane_status) go as
raw HTTP from the event loop instead, up to ``max_in_flight`` at once (``_openstack_http``): the same
requests without the SDK's per-call CPU.

Every blocking SDK call runs in a bounded thread pool (``max_workers``) on one
shared Connection (one token, pooled keep-alive connections); the SDK is
imported there, on first use, so loading this module costs nothing. Errors are
translated at the boundary (``_openstack_errors``); reads, PUTs of absolute
state and os-resetState (an absolute state too) are retried on
BackendUnavailable, migrations never. See docs/openstack.md.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from controller_adapter import _openstack_sdk as sdk
from controller_adapter._openstack_errors import translate
from controller_adapter._openstack_http import Endpoints, HttpPath, read_endpoints
from controller_adapter.base import (
    BackendUnavailable,
    ControllerError,
    Host,
    HostStatus,
    NotFound,
    Port,
    Server,
    ServerState,
    Unsupported,
)
from doctor_common.config import Section
from doctor_common.extras import OPENSTACK

T = TypeVar("T")
log = logging.getLogger("doctor.controller.openstack")
Settings = sdk.Settings

MIGRATION_TIMEOUT_S = 600.0  # how long a live or cold migration may take (the caller may bound it shorter)
MIGRATION_POLL_S = 0.2
_EXTENSION_CACHE_S = 60.0  # how long the data-plane-status extension check is trusted
_DPS_MISSING = ("Neutron lacks the 'data-plane-status' extension: enable the ML2 extension driver "
                "(ml2_conf.ini: [ml2] extension_drivers = ...,data_plane_status) and restart neutron-server")


class OpenStackController:
    name = "openstack"
    requires = ("openstack", OPENSTACK)  # the extra with openstacksdk and keystoneauth1: checked at start-up

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._pool = ThreadPoolExecutor(max_workers=self.settings.max_workers, thread_name_prefix="openstack-ctl")
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._ids = sdk.ServiceIds()
        self._dps: tuple[float, bool] | None = None  # (checked at, extension present)
        self._dps_check: asyncio.Task[None] | None = None  # a check running behind a fault's port updates
        self._warned_switches = False  # the aggregates could not be read: said once
        self._servers: dict[str, tuple[float, list[Server]]] = {}  # host -> (fetched at, servers)
        self._generation = 0  # bumped by our own writes to servers: a listing begun before must not be cached
        # the fault path's writes (force-down, resets, ports) over raw HTTP from the loop, all at once
        self._http = HttpPath(self._read_endpoints, self._network_endpoint, self.settings.timeout_s,
                              self.settings.max_in_flight, self.settings.retries) \
            if self.settings.http_fast_path else None

    @classmethod
    def from_config(cls, cfg: Section) -> "OpenStackController":
        """Read ``[controller.openstack]``; clouds.yaml itself is read on first use (importing the SDK)."""
        cloud = cfg.str("cloud", None)
        clouds_yaml = cfg.path("clouds_yaml", None)
        if clouds_yaml is not None and not clouds_yaml.is_file():
            raise cfg.error("clouds_yaml", f"no such file: {clouds_yaml}")
        version = cfg.str("compute_api_version", None)
        if version is not None and not re.fullmatch(r"2(\.\d+)?", version):
            raise cfg.error("compute_api_version", f"expected 2 or 2.N (e.g. 2.60), got {version!r}")
        settings = Settings(
            cloud=cloud, clouds_yaml=clouds_yaml, compute_api_version=version,
            timeout_s=cfg.float("timeout_s", 10.0, min=0.1),
            max_workers=cfg.int("max_workers", 8, min=1, max=64),
            retries=cfg.int("retries", 2, min=0, max=10),
            server_cache_s=cfg.float("server_cache_s", 0.0, min=0.0),
            max_in_flight=cfg.int("max_in_flight", 50, min=1, max=500),
            http_fast_path=cfg.bool("http_fast_path", True),
        )
        cfg.done()
        return cls(settings)

    # -- plumbing --------------------------------------------------------------------------

    def _connection(self) -> Any:
        with self._conn_lock:
            if self._conn is None:
                started = time.monotonic()
                self._conn = sdk.connect(self.settings)
                log.info("connected to cloud %r (compute API up to %s) in %.0f ms", self.settings.cloud or "(default)",
                         sdk.compute_version(self._conn), (time.monotonic() - started) * 1000)
            return self._conn

    def _blocking(self, what: str, policy: str | None, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._connection(), *args)
        except ControllerError:
            raise
        except Exception as exc:
            err = translate(exc, what, policy)
            if err is None:
                raise
            raise err from exc

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, retry: bool, policy: str | None = None) -> T:
        """Run ``fn(conn, *args)`` on the pool; retry BackendUnavailable only when ``retry`` (safe to repeat)."""
        loop = asyncio.get_running_loop()
        attempts = 1 + (self.settings.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            try:
                return await loop.run_in_executor(self._pool, self._blocking, what, policy, fn, args)
            except BackendUnavailable as exc:
                if attempt == attempts:
                    raise
                log.warning("%s (attempt %d of %d, retrying)", exc, attempt, attempts)
                await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise AssertionError("unreachable")

    async def _read_endpoints(self, reauthenticate: bool) -> Endpoints:
        return await self._call("authenticate and read the endpoints", read_endpoints, reauthenticate, retry=True)

    async def _network_endpoint(self) -> str:
        return await self._call("discover Neutron", lambda conn: sdk.network(conn).get_endpoint(), retry=False)

    async def connect(self) -> None:
        """Authenticate and discover the endpoints now (otherwise the first call does it), and set up the fault
        path's HTTP client: the first fault then pays for none of it."""
        await self._call("connect", lambda conn: None, retry=True)
        if self._http is not None:
            await self._http.warm()
        try:
            await self._check_dps()
        except ControllerError as exc:  # Neutron not there yet: the first port update asks again
            log.info("Neutron's extensions not read yet: %s", exc)

    # -- hosts -----------------------------------------------------------------------------

    async def list_hosts(self) -> list[Host]:
        found, switches = await asyncio.gather(
            self._call("list compute services", sdk.services, self._ids, retry=True,
                       policy="os_compute_api:os-services:list"),
            self._switches())
        return sorted((sdk.to_host(s, switches.get(s.host, "")) for s in found), key=lambda h: h.name)

    async def _switches(self) -> dict[str, str]:
        """Each host's switch from the host aggregates; without them (not allowed, not there), none."""
        try:
            return await self._call("list host aggregates", sdk.switches, retry=True,
                                    policy="os_compute_api:os-aggregates:index")
        except ControllerError as exc:
            if not self._warned_switches:
                log.warning("no switch topology from Nova's host aggregates (%s): the fleet guard judges by zone "
                            "and fleet only", exc)
                self._warned_switches = True
            return {}

    async def get_host(self, host: str) -> Host:
        svc = await self._call(f"host {host}", sdk.one_service, self._ids, host, retry=True,
                               policy="os_compute_api:os-services:list")
        return sdk.to_host(svc)

    async def force_down(self, host: str, down: bool = True) -> None:
        what = f"force {'down' if down else 'up'} host {host}"
        sid = self._ids.get(host)
        if self._http is not None and sid is not None and (await self._http.endpoints()).compute_max >= (2, 53):
            try:  # the service's uuid is known: the very PUT the SDK would send, without its resource layer
                await self._http.call(what, "PUT", "compute", f"/os-services/{sid}", {"forced_down": down},
                                      microversion="service", policy="os_compute_api:os-services:update")
                return
            except NotFound:
                self._ids.forget(host)  # re-created since: the SDK path looks it up again
        await self._call(what, sdk.update_service, self._ids, host, "forced_down", down, retry=True,
                         policy="os_compute_api:os-services:update")

    async def set_disabled(self, host: str, disabled: bool, reason: str = "") -> None:
        await self._call(f"{'disable' if disabled else 'enable'} host {host}", sdk.update_service, self._ids, host,
                         "disabled", disabled, reason, retry=True, policy="os_compute_api:os-services:update")

    async def host_is_empty(self, host: str) -> bool:
        _, servers, busy = await asyncio.gather(
            self.get_host(host),  # NotFound for an unknown host
            self._call(f"servers on {host}", sdk.list_servers, host, retry=True,
                       policy="os_compute_api:servers:detail:get_all_tenants"),
            self._call(f"migrations of {host}", sdk.busy_migrations, host, retry=True,
                       policy="os_compute_api:os-migrations:index"))
        return not servers and not busy

    # -- servers ---------------------------------------------------------------------------

    async def servers_on_host(self, host: str) -> list[Server]:
        ttl = self.settings.server_cache_s
        cached = self._servers.get(host)
        if ttl > 0 and cached is not None and time.monotonic() - cached[0] < ttl:
            return list(cached[1])
        generation = self._generation
        servers = await self._call(f"servers on {host}", sdk.list_servers, host, retry=True,
                                   policy="os_compute_api:servers:detail:get_all_tenants")
        if ttl > 0 and generation == self._generation:
            self._servers[host] = (time.monotonic(), servers)
        return list(servers)

    async def list_servers(self, project_id: str | None = None) -> list[Server]:
        return await self._call("list servers", sdk.list_servers, None, project_id, retry=True,
                                policy="os_compute_api:servers:detail:get_all_tenants")

    def _servers_changed(self) -> None:
        self._generation += 1
        self._servers.clear()

    async def reset_servers_state(self, server_ids: list[str], state: ServerState) -> dict[str, ControllerError]:
        if state not in (ServerState.ACTIVE, ServerState.ERROR):
            raise Unsupported(f"Nova's os-resetState sets only active or error, not {state.value}")
        ids = list(dict.fromkeys(server_ids))
        policy = "os_compute_api:os-admin-actions:reset_state"
        try:
            # os-resetState sets an absolute state: repeating it is harmless, so it is retried
            if self._http is not None:
                results = await asyncio.gather(*(
                    self._http.call(f"reset server {sid} to {state.value}", "POST", "compute", f"/servers/{sid}/action",
                                    {"os-resetState": {"state": state.value}}, microversion="server", policy=policy,
                                    accept="")  # as the SDK's server actions send it
                    for sid in ids), return_exceptions=True)
            else:
                results = await asyncio.gather(*(
                    self._call(f"reset server {sid} to {state.value}", sdk.reset_state, sid, state.value, retry=True,
                               policy=policy) for sid in ids), return_exceptions=True)
        finally:
            self._servers_changed()
        return _failures(ids, results)

    async def set_servers_running(self, server_ids: list[str], running: bool) -> dict[str, ControllerError]:
        ids = list(dict.fromkeys(server_ids))
        policy = "os_compute_api:servers:start" if running else "os_compute_api:servers:stop"
        try:
            # looked at first, so a repeat is harmless: retried
            results = await asyncio.gather(*(
                self._call(f"{'start' if running else 'stop'} server {sid}", sdk.set_running, sid, running,
                           retry=True, policy=policy) for sid in ids), return_exceptions=True)
        finally:
            self._servers_changed()
        return _failures(ids, results)

    async def server_host_status(self, server_id: str) -> tuple[str, HostStatus]:
        return await self._call(f"host status of server {server_id}", _host_status, server_id, retry=True,
                                policy="os_compute_api:servers:show")

    async def migrate_server(self, server_id: str, target_host: str | None = None, live: bool = True,
                             wait: bool = False) -> None:
        """Live (or cold) migrate; evacuate instead when the server's host is forced down (fenced). A cold
        migration is always followed to VERIFY_RESIZE and confirmed (else Nova keeps it in progress); with
        ``wait`` a live one is followed to its end too, and one Nova accepted and then failed raises."""
        kind = await self._call(f"plan moving server {server_id}", _plan_move, self._ids, server_id, target_host, live,
                                retry=True, policy="os_compute_api:os-services:list")
        policy = {"live": "os_compute_api:os-migrate-server:migrate_live", "evacuate": "os_compute_api:os-evacuate",
                  "cold": "os_compute_api:os-migrate-server:migrate"}[kind]
        try:
            follow = kind == "cold" or (wait and kind == "live")
            before = await self._migration_ids(server_id) if follow else set()
            await self._call(f"{kind} server {server_id}", sdk.move, server_id, kind, target_host, retry=False,
                             policy=policy)
            if follow:
                await self._await_migration(server_id, kind, before)
        finally:
            self._servers_changed()

    async def settle_migrations(self, host: str) -> int:
        waiting = await self._call(f"migrations of {host}", sdk.unconfirmed_resizes, host, retry=True,
                                   policy="os_compute_api:os-migrations:index")
        for server_id in waiting:
            try:
                await self._call(f"confirm the resize of {server_id}", sdk.confirm_resize, server_id, retry=False,
                                 policy="os_compute_api:servers:confirm_resize")
            except ControllerError as exc:
                if exc.status != 409:  # confirmed meanwhile (by Nova's resize_confirm_window, another call)
                    raise
        if waiting:
            self._servers_changed()
        return len(waiting)

    async def _migration_ids(self, server_id: str) -> set[int]:
        found = await self._call(f"migrations of {server_id}", sdk.server_migrations, server_id, retry=True,
                                 policy="os_compute_api:os-migrations:index")
        return {m.id for m in found}

    async def _await_migration(self, server_id: str, kind: str, before: set[int]) -> None:
        """Follow the migration our request started (the server's newest one not there before) to its end."""
        deadline = time.monotonic() + MIGRATION_TIMEOUT_S
        while True:
            found = await self._call(f"migrations of {server_id}", sdk.server_migrations, server_id, retry=True,
                                     policy="os_compute_api:os-migrations:index")
            ours = max((m for m in found if m.id not in before), key=lambda m: m.id, default=None)
            status = (ours.status or "").lower() if ours is not None else ""
            if kind == "cold" and status == "finished":
                await self._call(f"confirm the resize of {server_id}", sdk.confirm_resize, server_id, retry=False,
                                 policy="os_compute_api:servers:confirm_resize")
                return
            if status in ("completed", "done", "confirmed"):
                return
            if status in ("error", "failed", "cancelled", "reverted"):
                raise ControllerError(f"the {kind} migration of {server_id} failed: Nova's migration {ours.id} is "
                                      f"{status}")
            if time.monotonic() > deadline:
                raise ControllerError(f"the {kind} migration of {server_id} did not finish in "
                                      f"{MIGRATION_TIMEOUT_S:.0f}s ({status or 'no migration record'})")
            await asyncio.sleep(MIGRATION_POLL_S)

    # -- ports -----------------------------------------------------------------------------

    async def ports_on_host(self, host: str) -> list[Port]:
        return await self._call(f"ports on {host}", sdk.ports, host, retry=True, policy="get_port:binding:host_id")

    async def list_ports(self) -> list[Port]:
        return await self._call("list ports", sdk.all_ports, retry=True, policy="get_port:binding:host_id")

    async def set_ports_data_plane_status(self, port_ids: list[str], status: str) -> dict[str, ControllerError]:
        if status not in ("ACTIVE", "DOWN"):
            raise ControllerError(f"data_plane_status must be ACTIVE or DOWN, not {status!r}")
        ids = list(dict.fromkeys(port_ids))
        if not ids:
            return {}
        if not await self._has_data_plane_status():
            raise Unsupported(_DPS_MISSING)
        policy = "update_port:data_plane_status (role admin or data_plane_integrator)"
        if self._http is not None:
            results = await asyncio.gather(*(
                self._http.call(f"set data_plane_status of port {pid} to {status}", "PUT", "network", f"/ports/{pid}",
                                {"port": {"data_plane_status": status}}, policy=policy) for pid in ids),
                return_exceptions=True)
        else:
            results = await asyncio.gather(*(
                self._call(f"set data_plane_status of port {pid} to {status}", sdk.set_data_plane_status, pid, status,
                           retry=True, policy=policy) for pid in ids), return_exceptions=True)
        return _failures(ids, results)

    async def _has_data_plane_status(self) -> bool:
        """Whether Neutron has the extension. Known present, it is trusted and checked again behind the call once
        ``_EXTENSION_CACHE_S`` old (a fault's port updates never wait for that GET); unknown or missing, checked
        before the call once that old (it may have been enabled since)."""
        now = time.monotonic()
        if self._dps is not None and self._dps[1]:
            if now - self._dps[0] > _EXTENSION_CACHE_S and (self._dps_check is None or self._dps_check.done()):
                self._dps_check = asyncio.create_task(self._recheck_dps(), name="neutron extensions")
            return True
        if self._dps is None or now - self._dps[0] > _EXTENSION_CACHE_S:
            await self._check_dps()
        assert self._dps is not None
        return self._dps[1]

    async def _check_dps(self) -> None:
        present = await self._call("look up Neutron extension data-plane-status", sdk.has_extension,
                                   "data-plane-status", retry=True)
        self._dps = (time.monotonic(), present)

    async def _recheck_dps(self) -> None:
        try:
            await self._check_dps()
        except Exception as exc:  # noqa: BLE001 - behind a fault: the last answer stands until one comes
            log.warning("Neutron's extensions could not be read again: %s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        if self._dps_check is not None:
            self._dps_check.cancel()
            await asyncio.gather(self._dps_check, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, conn.close)
        await asyncio.to_thread(self._pool.shutdown)  # waits for calls in flight, off the event loop


def _failures(ids: list[str], results: list[Any]) -> dict[str, ControllerError]:
    """The per-id outcomes of a gather: the ControllerErrors by id; anything else that was raised is raised."""
    failed: dict[str, ControllerError] = {}
    for i, result in zip(ids, results):
        if isinstance(result, ControllerError):
            failed[i] = result
        elif isinstance(result, BaseException):
            raise result
    return failed


def _host_status(conn: Any, server_id: str) -> tuple[str, HostStatus]:
    if not sdk.supports(conn, "2.16"):
        raise Unsupported(f"host_status needs compute API 2.16; the cloud offers {sdk.compute_version(conn)}")
    server = sdk.get_server(conn, server_id)
    if server.host_status is None:
        raise ControllerError(f"Nova did not return host_status of server {server_id}: the account needs "
                              "os_compute_api:servers:show:host_status")
    try:
        status = HostStatus(server.host_status)
    except ValueError:
        status = HostStatus.UNKNOWN
    return server.compute_host or "", status


def _plan_move(conn: Any, ids: sdk.ServiceIds, server_id: str, target: str | None, live: bool) -> str:
    """Which move Nova must do, checked up front: Nova reports a bad target only asynchronously for some moves."""
    source = sdk.get_server(conn, server_id).compute_host
    services = {s.host: s for s in sdk.services(conn, ids)}
    src = services.get(source)
    if src is not None and src.is_forced_down:
        kind = "evacuate"  # the host is fenced and forced down: the only way off it
    elif src is not None and src.state != "up":
        raise ControllerError(f"server {server_id}: host {source} does not report and is not forced down; "
                              "fence it and force it down before evacuating (two copies must be impossible)")
    else:
        kind = "live" if live else "cold"

    def usable(s: Any) -> bool:
        return s.status == "enabled" and s.state == "up" and not s.is_forced_down

    if target is not None:
        dest = services.get(target)
        if dest is None or target == source or not usable(dest):
            why = "unknown" if dest is None else "the server's own host" if target == source else "not usable"
            raise ControllerError(f"host {target!r} cannot take server {server_id!r}: {why}")
    elif not any(usable(s) for h, s in services.items() if h != source):
        raise ControllerError(f"no valid host to move server {server_id!r} to")
    return kind


__all__ = ["OpenStackController", "Settings"]

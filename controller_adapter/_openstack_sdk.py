"""The blocking half of the OpenStack backend: openstacksdk calls and their mapping to our dataclasses.

Every function here runs on a worker thread of the adapter's pool and takes
the shared ``openstack.connection.Connection``. Two traps of openstacksdk 4.x
(see /work/shared/notes/openstack.md) shape the calls:

- servers on a host are listed with ``compute_host=`` (``host=`` yields nothing);
- updates pass the *id*, never a cached resource, or the SDK may skip the PUT.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller_adapter.base import (
    BackendUnavailable,
    ControllerError,
    Host,
    NotFound,
    Port,
    Server,
    ServerState,
    Unsupported,
)

BINARY = "nova-compute"
# Nova's migration statuses that mean "over"; anything else (queued, preparing, running,
# post-migrating, accepted, finished = a resize waiting for confirmation, ...) keeps the host busy
TERMINAL_MIGRATION = frozenset({"completed", "done", "confirmed", "reverted", "error", "failed", "cancelled"})


@dataclass(frozen=True)
class Settings:
    """What the adapter needs to reach a cloud (from the ``[controller.openstack]`` table)."""

    cloud: str | None = None  # a cloud of clouds.yaml; None: OS_CLOUD, or the only cloud there
    clouds_yaml: Path | None = None  # None: the SDK's search path (./, ~/.config/openstack, /etc/openstack)
    timeout_s: float = 10.0
    max_workers: int = 8
    retries: int = 2
    compute_api_version: str | None = None
    server_cache_s: float = 0.0
    max_in_flight: int = 50     # the fault path's writes over raw HTTP at once (``_openstack_http``)
    http_fast_path: bool = True  # False: those writes through openstacksdk's resource layer too


def connect(settings: Settings) -> Any:
    """A Connection with a per-request timeout, no SDK-level retries (ours apply) and a warm token."""
    import openstack.connection
    from keystoneauth1.session import TCPKeepAliveAdapter
    from openstack.config import loader

    files = [str(settings.clouds_yaml)] if settings.clouds_yaml else None
    config = loader.OpenStackConfig(config_files=files) if files else loader.OpenStackConfig()
    options: dict[str, Any] = {"api_timeout": settings.timeout_s, "connect_retries": 0, "status_code_retries": 0}
    if settings.compute_api_version:
        options["compute_api_version"] = settings.compute_api_version
    region = config.get_one(cloud=settings.cloud, **options)
    conn = openstack.connection.Connection(config=region)
    try:
        # one pooled keep-alive connection per worker, so concurrent calls reuse connections
        http = conn.session.session
        old = http.get_adapter("https://")
        pool = TCPKeepAliveAdapter(pool_maxsize=max(10, settings.max_workers),
                                   tls_ciphers=getattr(old, "tls_ciphers", None),
                                   tls_min_version=getattr(old, "tls_min_version", None))
        http.mount("https://", pool)
        http.mount("http://", pool)
        # authenticate and discover Nova now; Neutron on first use (``network``): a Neutron that does not
        # answer must not keep Nova's operations (force-down, resets) from working
        conn.authorize()
        conn.compute.get_endpoint_data()
    except BaseException:
        conn.close()  # the next call starts afresh; do not leak this one's sockets
        raise
    return conn


_NETWORK_LOCK = threading.Lock()  # guards each connection's own lock's creation only
NETWORK_RETRY_S = 30.0            # a Neutron that failed its discovery is not asked again before this


def network(conn: Any) -> Any:
    """The network proxy, its endpoint discovered once (the SDK creates proxies lazily and unsynchronised: one
    thread per connection at a time here). A failed discovery is remembered for ``NETWORK_RETRY_S``: network
    calls fail at once meanwhile instead of each waiting out the timeout and holding a worker Nova's calls
    need."""
    with _NETWORK_LOCK:
        lock = conn.__dict__.setdefault("_doctor_network_lock", threading.Lock())
    with lock:
        if getattr(conn, "_doctor_network_ready", False):
            return conn.network
        failed = getattr(conn, "_doctor_network_failed", None)
        if failed is not None and time.monotonic() - failed[0] < NETWORK_RETRY_S:
            raise BackendUnavailable(f"Neutron did not answer {time.monotonic() - failed[0]:.0f}s ago ({failed[1]}); "
                                     f"tried again {NETWORK_RETRY_S:.0f}s after that")
        try:
            conn.network.get_endpoint_data()
        except Exception as exc:
            conn._doctor_network_failed = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            raise
        conn._doctor_network_ready = True
    return conn.network


def supports(conn: Any, microversion: str) -> bool:
    """Whether the compute API (its maximum, or the configured pin) reaches ``microversion``."""
    from openstack import utils

    return bool(utils.supports_microversion(conn.compute, microversion))


def compute_version(conn: Any) -> str:
    """The compute microversion the cloud offers (or the configured pin), for messages."""
    if conn.compute.default_microversion:
        return str(conn.compute.default_microversion)
    data = conn.compute.get_endpoint_data()
    top = data.max_microversion if data else None
    return f"{top[0]}.{top[1]}" if top else "2.0 (no microversions)"


# -- mapping -----------------------------------------------------------------------------------

def to_host(svc: Any, switch: str = "") -> Host:
    return Host(name=svc.host, forced_down=bool(svc.is_forced_down), disabled=svc.status == "disabled",
                disabled_reason=svc.disabled_reason or "", alive=svc.state == "up",
                zone=svc.availability_zone or "", switch=switch)


def server_state(s: Any) -> ServerState:
    if (s.status or "").upper() in ("MIGRATING", "RESIZE", "VERIFY_RESIZE") or \
            s.task_state in ("migrating", "resize_prep", "resize_migrating", "resize_migrated", "resize_finish"):
        return ServerState.MIGRATING  # a live move, or a cold one (a resize to the same flavour) not confirmed yet
    if s.vm_state == "error":
        return ServerState.ERROR
    if s.vm_state == "stopped":
        return ServerState.STOPPED
    return ServerState.ACTIVE


def to_server(s: Any) -> Server:
    return Server(id=s.id, name=s.name or "", host=s.compute_host or "", project_id=s.project_id or "",
                  user_id=s.user_id or "", state=server_state(s))


def to_port(p: Any) -> Port:
    return Port(id=p.id, host=p.binding_host_id or "", project_id=p.project_id or "", device_id=p.device_id or "",
                data_plane_status=p.data_plane_status)


# -- services (hosts) --------------------------------------------------------------------------

class ServiceIds:
    """nova-compute service id per host (UUIDs from compute 2.53), learnt from every listing."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def learn(self, services: list[Any]) -> None:
        with self._lock:
            self._ids.update({s.host: str(s.id) for s in services if s.host})

    def get(self, host: str) -> str | None:
        with self._lock:
            return self._ids.get(host)

    def forget(self, host: str) -> None:
        with self._lock:
            self._ids.pop(host, None)


def services(conn: Any, ids: ServiceIds, host: str | None = None) -> list[Any]:
    query = {"binary": BINARY} | ({"host": host} if host is not None else {})
    found = [s for s in conn.compute.services(**query) if host is None or s.host == host]
    ids.learn(found)
    return found


SWITCH_KEY = "doctor_switch"  # host aggregate metadata: its hosts' data links go through this switch


def switches(conn: Any) -> dict[str, str]:
    """host -> switch, from the host aggregates whose metadata names one (``doctor_switch``)."""
    out: dict[str, str] = {}
    for agg in conn.compute.aggregates():
        switch = (agg.metadata or {}).get(SWITCH_KEY)
        if switch:
            for host in agg.hosts or []:
                out[host] = str(switch)
    return out


def one_service(conn: Any, ids: ServiceIds, host: str) -> Any:
    found = services(conn, ids, host)
    if not found:
        raise NotFound(f"host {host!r}: no {BINARY} service in Nova")
    return found[0]


def update_service(conn: Any, ids: ServiceIds, host: str, change: str, value: bool, reason: str = "") -> None:
    """Force down/up (``change="forced_down"``) or disable/enable (``"disabled"``) a host's nova-compute."""
    c = conn.compute
    if change == "forced_down" and not supports(conn, "2.11"):
        raise Unsupported(f"forcing a compute service down needs compute API 2.11; the cloud offers {compute_version(conn)}")
    if not supports(conn, "2.53"):
        # legacy forms address the service by host and binary: no lookup needed
        _service_call(c, change, None, host, value, reason)
        return
    for attempt in (1, 2):
        sid = ids.get(host) or str(one_service(conn, ids, host).id)
        try:
            _service_call(c, change, sid, host, value, reason)
            return
        except Exception as exc:  # a cached id of a service re-created since: look it up once more
            from openstack import exceptions as sdk

            if attempt == 2 or not isinstance(exc, sdk.NotFoundException):
                raise
            ids.forget(host)


def _service_call(c: Any, change: str, sid: str | None, host: str, value: bool, reason: str) -> None:
    if change == "forced_down":
        c.update_service_forced_down(sid, host=host, binary=BINARY, forced=value)
    elif value:
        c.disable_service(sid, host=host, binary=BINARY, disabled_reason=reason or None)
    else:
        c.enable_service(sid, host=host, binary=BINARY)


# -- servers, ports, migrations ----------------------------------------------------------------

def list_servers(conn: Any, host: str | None = None, project_id: str | None = None) -> list[Server]:
    query: dict[str, Any] = {"all_projects": True}
    if host is not None:
        query["compute_host"] = host  # not host=: the SDK would filter every result away
    if project_id is not None:
        query["project_id"] = project_id
    return sorted((to_server(s) for s in conn.compute.servers(**query)), key=lambda s: s.id)


def get_server(conn: Any, server_id: str) -> Any:
    return conn.compute.get_server(server_id)


def reset_state(conn: Any, server_id: str, state: str) -> None:
    conn.compute.reset_server_state(server_id, state)


def set_running(conn: Any, server_id: str, running: bool) -> None:
    """os-start / os-stop, unless the server is already so (Nova answers 409 to a repeat)."""
    s = conn.compute.get_server(server_id)
    stopped = (s.vm_state or "").lower() == "stopped"
    if s.task_state in ("powering-off", "powering-on"):
        return  # under way already: Nova would answer 409 to a second request
    if running and stopped:
        conn.compute.start_server(server_id)
    elif not running and not stopped:
        conn.compute.stop_server(server_id)


def confirm_resize(conn: Any, server_id: str) -> None:
    """A finished cold migration waits in VERIFY_RESIZE for this (or Nova's resize_confirm_window)."""
    conn.compute.confirm_server_resize(server_id)


def server_migrations(conn: Any, server_id: str) -> list[Any]:
    return list(conn.compute.migrations(instance_uuid=server_id))


def unconfirmed_resizes(conn: Any, host: str) -> list[str]:
    """Servers whose cold migration from ``host`` finished and waits for confirmResize."""
    return sorted({m.server_id for m in conn.compute.migrations(host=host)
                   if (m.status or "").lower() == "finished" and m.source_compute == host})


def busy_migrations(conn: Any, host: str) -> list[Any]:
    """Migrations from or to ``host`` that are not over."""
    return [m for m in conn.compute.migrations(host=host) if (m.status or "").lower() not in TERMINAL_MIGRATION]


def ports(conn: Any, host: str) -> list[Port]:
    return sorted((to_port(p) for p in network(conn).ports(**{"binding:host_id": host})), key=lambda p: p.id)


def all_ports(conn: Any) -> list[Port]:
    bound = (to_port(p) for p in network(conn).ports())
    return sorted((p for p in bound if p.host), key=lambda p: p.id)


def has_extension(conn: Any, alias: str) -> bool:
    # one GET of the list: find_extension() would GET the alias, then the list on a 404
    return any(e.alias == alias for e in network(conn).extensions())


def set_data_plane_status(conn: Any, port_id: str, status: str) -> None:
    network(conn).update_port(port_id, data_plane_status=status)


def move(conn: Any, server_id: str, kind: str, target: str | None) -> None:
    """Start a live migration, a cold migration or an evacuation (POST: never retried)."""
    c = conn.compute
    if kind == "evacuate":
        if not supports(conn, "2.14"):
            raise Unsupported(f"evacuation below compute API 2.14 needs onSharedStorage; the cloud offers {compute_version(conn)}")
        c.evacuate_server(server_id, host=target)
    elif kind == "live":
        if supports(conn, "2.25"):
            c.live_migrate_server(server_id, host=target, block_migration="auto")
        else:
            # before 2.25 a target host bypasses the scheduler: the SDK wants that said with force
            c.live_migrate_server(server_id, host=target, force=target is not None, block_migration=False,
                                  disk_over_commit=False)
    elif kind == "cold":
        if target is not None and not supports(conn, "2.56"):
            raise Unsupported(f"a cold migration to a chosen host needs compute API 2.56; the cloud offers {compute_version(conn)}")
        c.migrate_server(server_id, host=target)
    else:
        raise ControllerError(f"unknown kind of move {kind!r}")


__all__ = ["BINARY", "ServiceIds", "Settings", "TERMINAL_MIGRATION", "connect"]

"""The ``Controller`` interface: what the inspector needs from a cloud controller.

Exception tree::

    ControllerError              anything a backend could not do
    ├── NotFound                 no such host / server / port
    ├── Unsupported              the cloud lacks the feature (e.g. no data-plane-status)
    └── BackendUnavailable       timed out / unreachable; safe to retry idempotent calls

Backends: ``embedded`` (an inventory file, persisted in SQLite; the default)
and ``openstack`` (openstacksdk). One contract test suite runs over both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class ControllerError(Exception):
    """A controller operation failed. ``status`` and ``request_id`` when the backend speaks HTTP."""

    def __init__(self, message: str, *, status: int | None = None, request_id: str | None = None) -> None:
        self.status = status
        self.request_id = request_id
        extra = ", ".join(p for p in (f"HTTP {status}" if status else "", f"request {request_id}" if request_id else "") if p)
        super().__init__(f"{message} ({extra})" if extra else message)


class NotFound(ControllerError):
    pass


class Unsupported(ControllerError):
    pass


class BackendUnavailable(ControllerError):
    pass


class HostStatus(enum.Enum):
    """Nova's host_status of a server (API >= 2.16)."""

    UP = "UP"
    UNKNOWN = "UNKNOWN"
    DOWN = "DOWN"
    MAINTENANCE = "MAINTENANCE"
    NONE = ""  # the server has no host


class ServerState(enum.Enum):
    ACTIVE = "active"
    ERROR = "error"
    STOPPED = "stopped"
    MIGRATING = "migrating"


@dataclass(frozen=True)
class Bmc:
    """Where and how to reach a host's BMC over IPMI/LAN."""

    address: str
    port: int = 623
    username: str = "admin"
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class Host:
    name: str
    forced_down: bool = False
    disabled: bool = False
    disabled_reason: str = ""
    alive: bool = True  # the compute service reports (Nova: service state up)
    zone: str = ""
    bmc: Bmc | None = None
    switch: str = ""    # the top-of-rack switch its data links go through: a failure domain shared with its rack

    @property
    def status(self) -> HostStatus:
        """Nova's derivation: forced down wins, then disabled, then liveness."""
        if self.forced_down:
            return HostStatus.DOWN
        if self.disabled:
            return HostStatus.MAINTENANCE
        return HostStatus.UP if self.alive else HostStatus.UNKNOWN


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    host: str
    project_id: str
    user_id: str = ""
    state: ServerState = ServerState.ACTIVE
    domain: str = ""    # its libvirt domain's name, when the controller knows it (the id is the domain's uuid)


@dataclass(frozen=True)
class Port:
    id: str
    host: str
    project_id: str
    device_id: str = ""  # the server the port is attached to
    data_plane_status: str | None = None  # None, "ACTIVE" or "DOWN"


@runtime_checkable
class Controller(Protocol):
    """Every call is a coroutine; blocking backends run in a bounded thread pool."""

    name: str

    async def list_hosts(self) -> list[Host]: ...

    async def get_host(self, host: str) -> Host:
        """Raise NotFound for an unknown host."""
        ...

    async def servers_on_host(self, host: str) -> list[Server]:
        """All projects' servers on the host, with their owners."""
        ...

    async def list_servers(self, project_id: str | None = None) -> list[Server]:
        """Every server (of one project when given): a subscription's initial snapshot."""
        ...

    async def ports_on_host(self, host: str) -> list[Port]: ...

    async def list_ports(self) -> list[Port]:
        """Every port bound to a host (the resource map's refresh: one call, not one per host)."""
        ...

    async def force_down(self, host: str, down: bool = True) -> None:
        """Nova's forced_down: only after the host is fenced (DESIGN principle 2)."""
        ...

    async def set_disabled(self, host: str, disabled: bool, reason: str = "") -> None: ...

    async def reset_servers_state(self, server_ids: list[str], state: ServerState) -> dict[str, ControllerError]:
        """Set each server's state, concurrently where the backend can; return the failures by id."""
        ...

    async def set_ports_data_plane_status(self, port_ids: list[str], status: str) -> dict[str, ControllerError]:
        """Neutron data_plane_status ("DOWN"/"ACTIVE"); Unsupported when the cloud lacks it."""
        ...

    async def server_host_status(self, server_id: str) -> tuple[str, HostStatus]:
        """(host, host_status) of a server; raise NotFound for an unknown server."""
        ...

    async def set_servers_running(self, server_ids: list[str], running: bool) -> dict[str, ControllerError]:
        """Start (``running``) or shut down servers where they are (Nova os-start / os-stop); one already so is
        left as is. Returns the failures by id."""
        ...

    async def migrate_server(self, server_id: str, target_host: str | None = None, live: bool = True,
                             wait: bool = False) -> None:
        """Move a server to ``target_host`` (or where the scheduler puts it). With ``wait``, return once the move
        is over and raise if it failed after being accepted; without, a backend may return once it started."""
        ...

    async def host_is_empty(self, host: str) -> bool:
        """No servers on the host and no migration from it in progress."""
        ...

    async def settle_migrations(self, host: str) -> int:
        """Finish what moves from ``host`` wait for from us (Nova: a cold migration's confirmResize, which a
        caller that stopped waiting — a leader that died, a deadline — never sent); returns how many."""
        ...

    async def close(self) -> None: ...

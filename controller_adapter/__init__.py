"""Controller backends behind one interface; ``backend_class`` picks one by name."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from controller_adapter.base import (
    BackendUnavailable,
    Bmc,
    Controller,
    ControllerError,
    Host,
    HostStatus,
    NotFound,
    Port,
    Server,
    ServerState,
    Unsupported,
)
from doctor_common.extras import missing

__all__ = [
    "BackendUnavailable",
    "Bmc",
    "Controller",
    "ControllerError",
    "Host",
    "HostStatus",
    "NotFound",
    "Port",
    "Server",
    "ServerState",
    "Unsupported",
    "backend_class",
]


def backend_class(name: str) -> Any:
    """The class registered under ``doctor.controllers`` entry point ``name``."""
    for ep in entry_points(group="doctor.controllers"):
        if ep.name == name:
            cls = ep.load()
            # a backend's libraries come with an extra (e.g. nfv-doctor[openstack]): say so at start-up
            why = missing(*cls.requires) if getattr(cls, "requires", None) else None
            if why:
                raise LookupError(f"controller backend {name!r} {why}")
            return cls
    known = sorted(ep.name for ep in entry_points(group="doctor.controllers"))
    raise LookupError(f"unknown controller backend {name!r}; installed: {', '.join(known)}")

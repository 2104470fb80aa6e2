"""Checker plug-ins, registered under the ``doctor.checkers`` entry point group.

The built-in checkers are found without ``importlib.metadata`` (reading
every installed distribution's metadata costs the agent ~2 MB and 30 ms);
entry points are consulted only for a name that is not built in.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.checkers.base import Checker, Reading, Status

__all__ = ["Checker", "Reading", "Status", "checker_class"]


BUILT_IN = {"nic": "agent.checkers.nic:NicChecker", "ipmi": "agent.checkers.ipmi:IpmiChecker",
            "hypervisor": "agent.checkers.hypervisor:HypervisorChecker", "exec": "agent.checkers.exec:ExecChecker"}


def checker_class(name: str) -> Any:
    if name in BUILT_IN:
        module, _, attr = BUILT_IN[name].partition(":")
        return getattr(importlib.import_module(module), attr)
    from importlib.metadata import entry_points

    for ep in entry_points(group="doctor.checkers"):
        if ep.name == name:
            return ep.load()
    known = sorted(ep.name for ep in entry_points(group="doctor.checkers"))
    raise LookupError(f"unknown checker {name!r}; installed: {', '.join(known)}")

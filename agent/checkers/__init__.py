"""Checker plug-ins, registered under the ``doctor.checkers`` entry point group."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from agent.checkers.base import Checker, Reading, Status

__all__ = ["Checker", "Reading", "Status", "checker_class"]


def checker_class(name: str) -> Any:
    for ep in entry_points(group="doctor.checkers"):
        if ep.name == name:
            return ep.load()
    known = sorted(ep.name for ep in entry_points(group="doctor.checkers"))
    raise LookupError(f"unknown checker {name!r}; installed: {', '.join(known)}")

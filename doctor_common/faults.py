"""Severity names and fault-type patterns, shared by agents, policy and filters."""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache

from doctor_common.api import common_pb2

Severity = common_pb2.Severity

SEVERITY_BY_NAME: dict[str, int] = {
    Severity.Name(v).removeprefix("SEVERITY_").lower(): v for v in Severity.values() if v
}
# Nagios-style and seed spellings seen in the wild
SEVERITY_BY_NAME.update({"info": Severity.SEVERITY_INDETERMINATE, "error": Severity.SEVERITY_MAJOR})

_PATTERN_OK = re.compile(r"^[A-Za-z0-9_.\-*?]+$")


def severity_from_name(name: str) -> int:
    try:
        return SEVERITY_BY_NAME[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown severity {name!r}; use one of {', '.join(sorted(SEVERITY_BY_NAME))}") from None


def severity_name(value: int) -> str:
    return Severity.Name(value).removeprefix("SEVERITY_").lower() if value in Severity.values() else str(value)


def host_status_name(value: int) -> str:
    """UP, DOWN, ... (a value a newer server may send shows as its number)."""
    values = common_pb2.HostStatus.values()
    return common_pb2.HostStatus.Name(value).removeprefix("HOST_STATUS_") if value in values else str(value)


def phase_name(value: int) -> str:
    """suspected, fenced, marked_down, ... of an incident's notice ("" for a notify-only alarm)."""
    from doctor_common.api import fault_pb2

    if not value:
        return ""
    values = fault_pb2.IncidentPhase.values()
    return fault_pb2.IncidentPhase.Name(value).removeprefix("INCIDENT_PHASE_").lower() if value in values else str(value)


def check_pattern(pattern: str) -> str:
    """Validate a fault-type glob such as ``compute.host.*``; raise ValueError saying what is wrong."""
    if not pattern:
        raise ValueError("empty fault type pattern")
    if len(pattern) > 200:
        raise ValueError("fault type pattern longer than 200 characters")
    if not _PATTERN_OK.match(pattern):
        raise ValueError(
            f"fault type pattern {pattern!r} may hold only letters, digits, '.', '_', '-' and the wildcards '*' and '?'"
        )
    return pattern


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def type_matches(pattern: str, fault_type: str) -> bool:
    return _compiled(pattern).match(fault_type) is not None


def any_type_matches(patterns: list[str] | tuple[str, ...], fault_type: str) -> bool:
    return not patterns or any(type_matches(p, fault_type) for p in patterns)

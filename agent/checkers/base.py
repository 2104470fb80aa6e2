"""The one small interface every checker implements.

A checker watches some components of its host and yields a ``Reading`` each
time one of them changes (and one per component when it starts, so the agent
always knows the full level). Event-driven checkers (``nic``) yield from the
kernel's notifications; polling checkers wrap a probe in an interval loop.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from doctor_common.api import agent_pb2, common_pb2
from doctor_common.config import Section
from doctor_common.timeline import now_ns


GONE = "gone"  # a reading's detail: the component no longer exists (its OK is its last word; then forgotten)


class Status(enum.IntEnum):
    OK = agent_pb2.COMPONENT_STATUS_OK
    WARNING = agent_pb2.COMPONENT_STATUS_WARNING
    FAULT = agent_pb2.COMPONENT_STATUS_FAULT
    UNKNOWN = agent_pb2.COMPONENT_STATUS_UNKNOWN


@dataclass(frozen=True)
class Reading:
    """What a checker says about one component right now."""

    component: str
    status: Status
    fault_type: str = ""
    severity: int = common_pb2.SEVERITY_CLEARED
    description: str = ""
    details: dict[str, str] = field(default_factory=dict)
    observed_ns: int = field(default_factory=now_ns)

    def same_level(self, other: "Reading | None") -> bool:
        """Equal apart from when it was observed: not worth an event."""
        return (
            other is not None
            and self.status == other.status
            and self.fault_type == other.fault_type
            and self.severity == other.severity
        )

    def to_proto(self, checker: str, since_ns: int | None = None) -> agent_pb2.ComponentState:
        return agent_pb2.ComponentState(
            component=self.component,
            checker=checker,
            status=int(self.status),
            fault_type=self.fault_type,
            severity=self.severity,
            description=self.description,
            details=self.details,
            since_unix_nanos=since_ns if since_ns is not None else self.observed_ns,
        )


_beat: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("doctor_checker_beat", default=None)


def alive() -> None:
    """Tell the supervisor this checker made progress (its watchdog liveness), even when nothing changed.

    The supervisor sets the beat in the context of the task that iterates
    ``watch()``; tasks a checker creates inherit it. Outside a supervisor it
    does nothing.
    """
    beat = _beat.get()
    if beat is not None:
        beat()


def set_beat(beat: Callable[[], None] | None) -> contextvars.Token[Callable[[], None] | None]:
    return _beat.set(beat)


@runtime_checkable
class Checker(Protocol):
    """``from_config`` builds it from its ``[checkers.NAME]`` table; ``watch`` runs until cancelled.

    A checker may also have ``liveness_s``: the longest it can go without
    yielding or calling :func:`alive` while healthy. The agent's watchdog then
    counts it as hung past that; without it only its task's death counts.
    """

    name: str

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "Checker": ...

    def watch(self) -> AsyncIterator[Reading]: ...

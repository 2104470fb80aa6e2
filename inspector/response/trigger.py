"""A fault as the inspector received it: what every response starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

from doctor_common.api import common_pb2
from doctor_common.timeline import Stage, stamp

SILENCE = "compute.host.unreachable"     # judged from the agent's silence: absence of evidence
POWER_OFF = "compute.host.power.off"     # the BMC says off while nobody asked: confirmed, never sent


@dataclass
class Trigger:
    """One fault as the inspector received it."""

    host: str
    fault_type: str
    severity: int
    component: str = ""
    description: str = ""
    details: dict[str, str] = field(default_factory=dict)
    observed_ns: int = 0
    sent_ns: int = 0
    received_ns: int = 0


def start_timeline(t: Trigger) -> common_pb2.Timeline:
    """The fault's timeline as far as the agent and the gateway stamped it."""
    tl = common_pb2.Timeline()
    for stage, at in ((Stage.STAGE_OBSERVED, t.observed_ns), (Stage.STAGE_SENT, t.sent_ns),
                      (Stage.STAGE_RECEIVED, t.received_ns)):
        if at:
            stamp(tl, stage, at)
    return tl

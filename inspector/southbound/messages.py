"""What an agent may send: every field checked against the limits both sides share.

A message that breaks one ends only its own stream (``BadMessage`` becomes
INVALID_ARGUMENT naming the field); the limits live in
``doctor_common/agent_limits.py``, which the agent stays within.
"""

from __future__ import annotations

from doctor_common.agent_limits import MAX_CHECKERS, MAX_COMPONENTS, MAX_DETAILS, MAX_ID, MAX_RUNS, MAX_TEXT
from doctor_common.api import agent_pb2, common_pb2
from inspector.response.trigger import Trigger

FAULTY = (agent_pb2.COMPONENT_STATUS_FAULT, agent_pb2.COMPONENT_STATUS_WARNING, agent_pb2.COMPONENT_STATUS_UNKNOWN)
# looked up once: an enum's values() builds a new list per call, and every event is checked against them
_STATUSES = frozenset(agent_pb2.ComponentStatus.values()) - {agent_pb2.COMPONENT_STATUS_UNSPECIFIED}
_SEVERITIES = frozenset(common_pb2.Severity.values())


class BadMessage(ValueError):
    pass


def check_state(s: agent_pb2.ComponentState, where: str) -> None:
    if not s.component or len(s.component) > MAX_ID:
        raise BadMessage(f"{where}.component must be 1-{MAX_ID} characters")
    if s.status not in _STATUSES:
        raise BadMessage(f"{where}.status {s.status} is not a ComponentStatus")
    if s.severity not in _SEVERITIES:
        raise BadMessage(f"{where}.severity {s.severity} is not a Severity")
    if s.status in FAULTY and not s.fault_type:
        raise BadMessage(f"{where}.fault_type is required when the status is not OK")
    if len(s.fault_type) > MAX_ID or len(s.description) > MAX_TEXT or len(s.checker) > MAX_ID:
        raise BadMessage(f"{where}: fault_type/checker over {MAX_ID} or description over {MAX_TEXT} characters")
    details = s.details
    if details and (len(details) > MAX_DETAILS or any(len(k) > MAX_ID or len(v) > MAX_TEXT
                                                      for k, v in details.items())):
        raise BadMessage(f"{where}.details: at most {MAX_DETAILS} entries of {MAX_ID}/{MAX_TEXT} characters")


def check_health(h: agent_pb2.AgentHealth) -> None:
    if len(h.checkers) > MAX_CHECKERS or len(h.loops_not_alive) > MAX_CHECKERS:
        raise BadMessage(f"health: at most {MAX_CHECKERS} checkers and {MAX_CHECKERS} loops_not_alive")
    if any(len(t) > MAX_TEXT for t in h.loops_not_alive):
        raise BadMessage(f"health.loops_not_alive: at most {MAX_TEXT} characters each")
    for i, c in enumerate(h.checkers):
        where = f"health.checkers[{i}]"
        if not c.checker or len(c.checker) > MAX_ID or len(c.last_crash) > MAX_TEXT:
            raise BadMessage(f"{where}: checker must be 1-{MAX_ID} characters, last_crash at most {MAX_TEXT}")
        if len(c.checks) > MAX_CHECKERS:
            raise BadMessage(f"{where}.checks: at most {MAX_CHECKERS}")
        for j, k in enumerate(c.checks):
            if not k.check or len(k.check) > MAX_ID or len(k.recent) > MAX_RUNS:
                raise BadMessage(f"{where}.checks[{j}]: check must be 1-{MAX_ID} characters, at most {MAX_RUNS} "
                                 f"recent runs")
            if any(len(r.outcome) > MAX_ID or len(r.detail) > MAX_TEXT for r in k.recent):
                raise BadMessage(f"{where}.checks[{j}].recent: outcome over {MAX_ID} or detail over {MAX_TEXT} "
                                 f"characters")


def check_hello(h: agent_pb2.Hello) -> None:
    if not h.host_id or len(h.host_id) > MAX_ID:
        raise BadMessage(f"hello.host_id must be 1-{MAX_ID} characters")
    if not h.boot_id or len(h.boot_id) > MAX_ID:
        raise BadMessage(f"hello.boot_id must be 1-{MAX_ID} characters")
    if len(h.host_boot_id) > MAX_ID:
        raise BadMessage(f"hello.host_boot_id must be at most {MAX_ID} characters")
    if len(h.components) > MAX_COMPONENTS:
        raise BadMessage(f"hello.components: at most {MAX_COMPONENTS}")
    if len(h.facts) > MAX_DETAILS or any(len(k) > MAX_ID or len(v) > MAX_TEXT for k, v in h.facts.items()):
        raise BadMessage(f"hello.facts: at most {MAX_DETAILS} entries of {MAX_ID}/{MAX_TEXT} characters")
    for i, c in enumerate(h.components):
        check_state(c, f"hello.components[{i}]")


def trigger_from_state(host: str, s: agent_pb2.ComponentState, observed: int, sent: int, received: int) -> Trigger:
    return Trigger(host=host, fault_type=s.fault_type, severity=s.severity, component=s.component,
                   description=s.description, details=dict(s.details), observed_ns=observed, sent_ns=sent,
                   received_ns=received)

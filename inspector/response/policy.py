"""The failure policy: which faults lead to which actions (a file the administrator writes).

A rule selects faults by type pattern and minimum severity, can aggregate
(act only after ``count`` matching events within ``window_s``), and names its
actions. The first matching rule wins.

    [[rule]]
    name = "nic-down"
    match = ["compute.host.nic.*"]
    min_severity = "critical"
    actions = ["fence", "mark_down", "reset_servers", "ports_down", "notify"]
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from doctor_common.config import ConfigError, Section
from doctor_common.faults import any_type_matches, check_pattern, severity_from_name

ACTIONS = ("fence", "mark_down", "reset_servers", "ports_down", "notify", "notify_admin", "server_error")
# server_error: the one server a fault names (its VM died: a dead qemu) is set to error; needs no fence, the host
# and its other servers are untouched


@dataclass(frozen=True)
class Rule:
    name: str
    patterns: tuple[str, ...]
    actions: frozenset[str]
    min_severity: int = 0
    count: int = 1
    window_s: float = 0.0

    @property
    def fences(self) -> bool:
        return "fence" in self.actions


@dataclass
class Policy:
    rules: list[Rule]
    _seen: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def match(self, fault_type: str, severity: int) -> Rule | None:
        for rule in self.rules:
            if severity >= rule.min_severity and any_type_matches(rule.patterns, fault_type):
                return rule
        return None

    def decide(self, host: str, fault_type: str, severity: int, now: float | None = None) -> Rule | None:
        """The rule to apply now, or None (no rule, or aggregation not yet reached)."""
        rule = self.match(fault_type, severity)
        if rule is None or rule.count <= 1:
            return rule
        now = time.monotonic() if now is None else now
        window = self._seen.setdefault((host, rule.name), deque(maxlen=rule.count))
        window.append(now)
        if len(window) == rule.count and now - window[0] <= rule.window_s:
            window.clear()
            return rule
        return None


FENCE_ALL = frozenset({"fence", "mark_down", "reset_servers", "ports_down", "notify"})

DEFAULT_RULES = [
    # the host is gone or cut off: fence it, then hand its servers to their owners (the fleet guard judges first)
    Rule("nic-down", ("compute.host.nic.down",), FENCE_ALL, severity_from_name("critical")),
    Rule("host-unreachable", ("compute.host.unreachable",), FENCE_ALL, severity_from_name("major")),
    Rule("power-failure", ("compute.host.power.*",), FENCE_ALL, severity_from_name("critical")),
    # the seeds' southbound example: a monitor says the host is down (its sample inspector marks it down)
    Rule("host-down", ("compute.host.down",), FENCE_ALL, severity_from_name("critical")),
    # a VM whose qemu died: its owner only, and that server to error (the host and its other servers are fine)
    Rule("server-down", ("compute.hypervisor.qemu.missing",), frozenset({"notify", "server_error"}),
         severity_from_name("critical")),
    # agent death (or its misconfiguration) is not host death (principle 4): administrators only
    Rule("agent-down", ("compute.host.agent.*",), frozenset({"notify_admin"})),
    # the annex: a disk crash behind redundant storage is for OAM, not for the owners
    Rule("disk", ("compute.host.disk.*",), frozenset({"notify_admin"})),
    # everything else a host reports (CPU, memory, mainboard, OS crash, hypervisor, sensors, restarts, operator
    # checks) from warning up: tell the owners at once, so they switch over or migrate (the annex's actions)
    Rule("other", ("*",), frozenset({"notify"}), severity_from_name("warning")),
]


def default_policy() -> Policy:
    return Policy(list(DEFAULT_RULES))


def load_policy(path: Path | str) -> Policy:
    root = Section.load(path)
    rules = []
    for r in root.sections("rule"):
        patterns = r.str_list("match")
        if not patterns:
            raise r.error("match", "list at least one fault type pattern")
        for i, p in enumerate(patterns):
            try:
                check_pattern(p)
            except ValueError as exc:
                raise r.error(f"match[{i}]", str(exc)) from None
        actions = r.str_list("actions")
        for a in actions:
            if a not in ACTIONS:
                raise r.error("actions", f"unknown action {a!r}; use {', '.join(ACTIONS)}")
        if any(a in actions for a in ("mark_down", "reset_servers", "ports_down")) and "fence" not in actions:
            raise r.error("actions", "mark_down, reset_servers and ports_down need fence: a host is declared down only once fenced")
        try:
            sev = severity_from_name(r.str("min_severity", "indeterminate"))
        except ValueError as exc:
            raise r.error("min_severity", str(exc)) from None
        count = r.int("count", 1, min=1, max=1000)
        window = r.float("window_s", 0.0, min=0.0)
        if count > 1 and window <= 0:
            raise r.error("window_s", "aggregation (count > 1) needs a window_s > 0")
        rules.append(Rule(r.str("name", f"rule-{len(rules)}"), tuple(patterns), frozenset(actions), sev, count, window))
        r.done()
    root.done()
    if not rules:
        raise ConfigError(path, "rule", "the policy file defines no [[rule]]")
    return Policy(rules)

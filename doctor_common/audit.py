"""The audit trail: one line per decision on the ``doctor.audit`` logger, so it can be routed on its own.

Each line is a short sentence with its facts also attached as structured
fields (``record.fields``, a dict: the JSON log format writes them as keys).
What is audited: a fault received and judged, a fence attempt and its
outcome, a notification published with its recipient count, an operator's
act (enable-host, maintenance start/end/retire/reply) with the caller's name,
and a rejected client with why. Never a secret: callers pass names, hosts
and reasons, never tokens or passwords.

An ``Audit`` object is one daemon's trail; listeners (the inspector's
metrics) hear each event as ``(event, fields)`` without parsing log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

AUDIT = "doctor.audit"
log = logging.getLogger(AUDIT)

Listener = Callable[[str, dict[str, Any]], None]


class Audit:
    """One daemon's audit trail and whoever listens to it."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self.listeners: list[Listener] = []

    def _emit(self, event: str, message: str, fields: dict[str, Any], level: int = logging.INFO) -> None:
        fields["event"] = event
        for listener in self.listeners:
            try:
                listener(event, fields)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop a decision
                logging.getLogger("doctor").exception("audit listener failed on %s", event)
        if self.log.isEnabledFor(level):
            self.log.log(level, "AUDIT %s %s", event, message, extra={"fields": fields})

    # -- the fault path --------------------------------------------------------------------

    def fault(self, host: str, component: str, fault_type: str, verdict: str, reason: str = "") -> None:
        """A fault received and what it led to (``verdict``: ignored, notified, correlated, suspected)."""
        self._emit("fault", f"{fault_type} on {host} ({component or '-'}): {verdict}"
                   + (f" ({reason})" if reason else ""),
                   {"host": host, "component": component, "fault_type": fault_type, "verdict": verdict,
                    "reason": reason})

    def judged(self, host: str, fault_type: str, verdict: str, reason: str = "") -> None:
        """The fleet guard's verdict on a suspicion: fence, hold, wait or withdraw."""
        self._emit("judged", f"suspicion of {host} ({fault_type}): {verdict}" + (f": {reason}" if reason else ""),
                   {"host": host, "fault_type": fault_type, "verdict": verdict, "reason": reason})

    def fence_attempt(self, host: str, attempt: int) -> None:
        self._emit("fence_attempt", f"fencing {host} (attempt {attempt})", {"host": host, "attempt": attempt})

    def fence_result(self, host: str, result: str, error: str = "") -> None:
        """``result``: ok, already_off or failed (with the error)."""
        self._emit("fence_result", f"fence of {host}: {result}" + (f": {error}" if error else ""),
                   {"host": host, "result": result, "error": error},
                   logging.WARNING if result == "failed" else logging.INFO)

    def published(self, sequence: int, notification_id: str, recipients: int, phase: str) -> None:
        self._emit("published", f"notification {notification_id} at sequence {sequence} ({phase}) "
                   f"to {recipients} subscribers",
                   {"sequence": sequence, "notification_id": notification_id, "recipients": recipients,
                    "phase": phase})

    def profiled(self, fault_type: str, stages: list[tuple[str, float]]) -> None:
        """A finished incident's stage durations (ms): for listeners (the profiler's histograms), not logged."""
        for listener in self.listeners:
            try:
                listener("profiled", {"fault_type": fault_type, "stages": stages})
            except Exception:  # noqa: BLE001 - see _emit
                logging.getLogger("doctor").exception("audit listener failed on profiled")

    # -- people and programs -----------------------------------------------------------------

    def operator(self, action: str, principal: str, target: str, outcome: str, detail: str = "") -> None:
        """An operator's or consumer's act: ``principal`` is the name their token stands for."""
        self._emit("operator", f"{action} {target} by {principal}: {outcome}" + (f" ({detail})" if detail else ""),
                   {"action": action, "principal": principal, "target": target, "outcome": outcome,
                    "detail": detail})

    def rejected(self, peer: str, kind: str, why: str) -> None:
        """A client turned away. ``kind``: missing_token, unknown_token, not_admin, wrong_host."""
        self._emit("rejected", f"{peer or 'unknown peer'} ({kind}): {why}",
                   {"peer": peer, "kind": kind, "reason": why}, logging.WARNING)

"""TEST HOOK: make the inspector die (or freeze) at an exact point of a recovery.

Failover tests must kill a leader between two particular steps, which no
outside timing can hit reliably. ``doctor-inspector`` reads two environment
variables once, at start (``arm_from_env``):

* ``DOCTOR_TEST_CRASH_AT=<point>``: the process SIGKILLs itself right after
  ``<point>`` — no clean-up, no lease revocation, exactly like ``kill -9``;
* ``DOCTOR_TEST_PAUSE_AT=<point>``: the process SIGSTOPs itself there (a GC
  pause, a frozen VM); the test sends SIGCONT later.

Points (in recovery order): ``before_fence`` (incident journalled, nothing
done), ``after_fence`` (power-off confirmed and journalled, host not yet
marked down), ``after_mark_down`` (controller updated and journalled, not
yet published), ``after_publish`` (notification appended to the log, not yet
offered to any subscriber; a maintenance notice too). Maintenance:
``maintenance_moving`` (a server's move asked of the controller and done
there, not yet recorded as done). Unset (always, in production) they cost
one comparison. Never set them outside tests.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("doctor.inspector.crashpoint")

POINTS = ("before_fence", "after_fence", "after_mark_down", "after_publish", "maintenance_moving")
_crash_at = ""
_pause_at = ""


def arm_from_env() -> None:
    """Read the hooks' variables (called once by ``doctor-inspector`` at start)."""
    global _crash_at, _pause_at
    _crash_at = os.environ.get("DOCTOR_TEST_CRASH_AT", "")
    _pause_at = os.environ.get("DOCTOR_TEST_PAUSE_AT", "")
    for name, value in (("DOCTOR_TEST_CRASH_AT", _crash_at), ("DOCTOR_TEST_PAUSE_AT", _pause_at)):
        if value and value not in POINTS:
            raise ValueError(f"{name}={value!r}: use one of {', '.join(POINTS)}")
        if value:
            log.warning("TEST HOOK armed: %s=%s", name, value)


def reached(point: str) -> None:
    """Called at each point; does nothing unless a test armed it."""
    if point == _crash_at:
        log.critical("TEST HOOK: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
    if point == _pause_at:
        log.critical("TEST HOOK: SIGSTOP at %s", point)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
        log.warning("TEST HOOK: continued after %s", point)

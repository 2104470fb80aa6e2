"""Logging set-up: journald-friendly under systemd, timestamped on a terminal.

Under journald (stderr is the stream ``$JOURNAL_STREAM`` names) every line
carries its syslog priority as an sd-daemon prefix (``<3>`` error, ``<4>``
warning, ``<6>`` info, ``<7>`` debug; ``sd-daemon(3)``), so ``journalctl -p
err`` finds the errors; each line of a traceback carries it too (journald
reads the stream line by line).
"""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities of the logging levels (sd-daemon prefixes)
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """``<N>`` before every line of a record: its syslog priority, for journald's stream parser."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def under_journald(stream: object = None, env: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` (stderr) is connected to the journal: ``$JOURNAL_STREAM`` is ``<device>:<inode>`` of the
    stream systemd connected, and a child whose stderr was redirected elsewhere must not prefix its lines."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if under_journald():
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))  # journald stamps the time
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    # pyghmi and grpc are chatty at INFO about things that are not ours
    logging.getLogger("grpc").setLevel(logging.WARNING)

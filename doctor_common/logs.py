"""Logging set-up: journald-friendly under systemd, timestamped on a terminal, or one JSON object a line.

Under journald (stderr is the stream ``$JOURNAL_STREAM`` names) every line
carries its syslog priority as an sd-daemon prefix (``<3>`` error, ``<4>``
warning, ``<6>`` info, ``<7>`` debug; ``sd-daemon(3)``), so ``journalctl -p
err`` finds the errors; each line of a traceback carries it too (journald
reads the stream line by line).

``log_format = "json"`` writes each record as one JSON object on one line:
``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, the record's
structured ``fields`` (the audit trail's, ``doctor_common/audit.py``) as
keys of their own, and ``exception`` with the traceback when there is one;
under journald the line keeps its priority prefix.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

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


FORMATS = ("text", "json")
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, its newlines escaped)."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update((k if k not in _RESERVED else f"field_{k}", v) for k, v in fields.items())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        line = json.dumps(out, default=str, ensure_ascii=False)
        return f"<{priority(record.levelno)}>{line}" if self.journald else line


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


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(journald=under_journald()))
    elif under_journald():
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))  # journald stamps the time
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    # pyghmi and grpc are chatty at INFO about things that are not ours
    logging.getLogger("grpc").setLevel(logging.WARNING)
    # the audit trail (doctor_common/audit.py) is written whatever the level: route or drop it by its logger name
    logging.getLogger("doctor.audit").setLevel(logging.INFO)

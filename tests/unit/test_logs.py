"""Under journald every log line carries its syslog priority (sd-daemon prefix), tracebacks included; the JSON
format writes one object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

from doctor_common.logs import JournalFormatter, JsonFormatter, priority, setup_logging, under_journald


def test_priorities_and_every_line_prefixed() -> None:
    f = JournalFormatter("%(levelname)s %(name)s: %(message)s")
    assert [priority(x) for x in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)] \
        == [7, 6, 4, 3, 2]
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("doctor.x", logging.ERROR, __file__, 1, "fencing %s failed", ("h1",),
                                   exc_info=sys.exc_info())
    lines = f.format(record).split("\n")
    assert lines[0] == "<3>ERROR doctor.x: fencing h1 failed" and len(lines) > 2
    assert all(line.startswith("<3>") for line in lines), "a traceback stays at the error priority"


def test_journald_is_the_stream_it_names() -> None:
    """$JOURNAL_STREAM names the device:inode of the stream systemd connected; another stream (a child's stderr
    redirected to a file) gets no prefixes."""
    with tempfile.TemporaryFile() as stream:
        st = os.fstat(stream.fileno())
        assert under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(stream, {})


def test_json_format_is_one_object_per_line_with_the_fields() -> None:
    """log_format = "json": time, level, logger, message and the record's structured fields as keys; a
    traceback is one escaped field, so the record stays one line; a field never overwrites the fixed keys."""
    f = JsonFormatter()
    record = logging.LogRecord("doctor.audit", logging.INFO, __file__, 1, "AUDIT %s", ("fault",), None)
    record.fields = {"event": "fault", "host": "h1", "recipients": 3, "message": "not the message"}
    entry = json.loads(f.format(record))
    assert entry["level"] == "info" and entry["logger"] == "doctor.audit" and entry["message"] == "AUDIT fault"
    assert entry["event"] == "fault" and entry["host"] == "h1" and entry["recipients"] == 3
    assert entry["field_message"] == "not the message"
    assert entry["time"].endswith("+00:00") and entry["time"][:4].isdigit()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord("doctor.x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info())
    line = f.format(failed)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exception"]
    assert JsonFormatter(journald=True).format(failed).startswith("<3>{")


def test_the_audit_trail_is_kept_whatever_the_level() -> None:
    """log_level = "warning" drops the daemon's INFO lines, not the audit trail's."""
    root = logging.getLogger()
    handlers, level, grpc_level = root.handlers[:], root.level, logging.getLogger("grpc").level
    try:
        setup_logging("warning", "json")
        assert logging.getLogger("doctor.audit").isEnabledFor(logging.INFO)
        assert not logging.getLogger("doctor.inspector").isEnabledFor(logging.INFO)
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        logging.getLogger("doctor.audit").setLevel(logging.NOTSET)
        logging.getLogger("grpc").setLevel(grpc_level)
        root.handlers[:] = handlers
        root.setLevel(level)

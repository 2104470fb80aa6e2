"""Under journald every log line carries its syslog priority (sd-daemon prefix), tracebacks included."""

from __future__ import annotations

import logging
import os
import sys
import tempfile

from doctor_common.logs import JournalFormatter, priority, under_journald


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

"""Logging set-up: journald-friendly under systemd, timestamped on a terminal."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr, force=True)
    # pyghmi and grpc are chatty at INFO about things that are not ours
    logging.getLogger("grpc").setLevel(logging.WARNING)

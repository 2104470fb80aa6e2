"""doctorctl and the shell: the values it checks, its exit codes, its one-line errors.

Every way doctorctl ends is one of the codes below, with at most one line on
stderr and never a traceback for anything a user can cause: a bad flag or
value (argparse's wording, the flag named), a token file that cannot be read
(the file named), an inspector that refuses (the gRPC status and its
message), no inspector serving (each endpoint tried and why), a reader that
closed the pipe (``doctorctl subscribe | head -1``: quietly), Ctrl-C (quietly).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import grpc

from doctor_common.failover import Unreachable, one_line

OK = 0
REFUSED = 1          # the inspector answered with an error (status name: message)
USAGE = 2            # a bad flag or value, a token file that cannot be read (argparse's code)
ROLLED_BACK = 3      # a maintenance session rolled back or failed
UNREACHABLE = 4      # no endpoint served the request within the deadline
INTERRUPTED = 130    # Ctrl-C (128 + SIGINT)
BROKEN_PIPE = 141    # stdout's reader went away (128 + SIGPIPE, as a tool killed by it)

EXIT_CODES = f"""exit status: {OK} done; {REFUSED} the inspector refused (its gRPC status and message on stderr);
{USAGE} bad usage or value, unreadable token file; {ROLLED_BACK} a maintenance session rolled back or failed;
{UNREACHABLE} no inspector served the request (each endpoint tried and why); {INTERRUPTED} Ctrl-C;
{BROKEN_PIPE} stdout closed by its reader
"""

DEFAULT_ENDPOINT = "127.0.0.1:50051"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\],]+):(\d{1,5})$")
_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")  # gRPC target forms passed as they are


class UsageError(Exception):
    """What the user gave is wrong; the message says what to give instead."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit USAGE."""

    def error(self, message: str) -> NoReturn:
        raise SystemExit(say(f"{self.prog}: error: {message} (see {self.prog} --help)", USAGE))


def say(line: str, code: int) -> int:
    """``line`` on stderr, as one line; returns ``code``."""
    try:
        print(one_line(line), file=sys.stderr, flush=True)
    except OSError:  # stderr gone too: the code says it
        pass
    return code


def endpoint_list(text: str) -> list[str]:
    """``A,B`` → ``[A, B]``, each HOST:PORT, [V6]:PORT or unix:PATH (argparse type for --endpoint)."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item.startswith(_SCHEMES) and item.partition(":")[2].strip("/"):
            out.append(item)
            continue
        m = _HOST_PORT.match(item)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise argparse.ArgumentTypeError(f"{item!r}: give HOST:PORT or unix:PATH (several: comma-separated, "
                                             "or the option repeated)")
        out.append(item)
    return out


def endpoints_from(given: list[list[str]] | None) -> list[str]:
    """--endpoint (repeatable, comma-separated), else $DOCTOR_ENDPOINTS, else $DOCTOR_ENDPOINT, else the default."""
    if given:
        return [e for group in given for e in group]
    for var in ("DOCTOR_ENDPOINTS", "DOCTOR_ENDPOINT"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return endpoint_list(value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"${var}: {exc}") from None
    return [DEFAULT_ENDPOINT]


def seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"give seconds above {low:g}, at most {high:g} (got {text})")
        return value
    return parse


def count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"give {minimum} or more (got {value})")
        return value
    return parse


def read_token(path: str | None) -> str | None:
    """The token in ``path`` (else $DOCTOR_TOKEN); a file that cannot be read or is empty is a UsageError."""
    if not path:
        return os.environ.get("DOCTOR_TOKEN")
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--token-file {path}: cannot read it: {why}") from None
    if not token:
        raise UsageError(f"--token-file {path}: the file is empty (it should hold the bearer token)")
    return token


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _interrupted(_signum: int, _frame: object) -> None:
    """Ctrl-C: what was printed is flushed, then the process ends with 130 at once — not through a cancellation
    a retry loop might be in the middle of handling (a command waiting on a server has nothing to undo)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(INTERRUPTED)


def run(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run doctorctl's coroutine; every way it can end becomes an exit code (and at most one line on stderr)."""
    signal.signal(signal.SIGINT, _interrupted)  # not asyncio.run's handler: that one cancels and waits
    try:
        code = asyncio.run(main())
        if sys.stdout is not None:  # None when started with stdout closed (>&-)
            sys.stdout.flush()  # here, so a reader gone before the last write is a BrokenPipeError caught below
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt:
        return INTERRUPTED
    except UsageError as exc:
        return say(f"doctorctl: error: {exc}", USAGE)
    except Unreachable as exc:
        return say(f"doctorctl: {exc.details()}", UNREACHABLE)
    except grpc.aio.AioRpcError as exc:
        return say(f"doctorctl: {exc.code().name}: {exc.details()}", REFUSED)

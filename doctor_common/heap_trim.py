"""Give freed heap back to the system once many streams have ended (glibc's ``malloc_trim``).

A gRPC stream's memory is mostly gRPC core's (its call arena, the HTTP/2
stream) and grpc.aio's objects. When thousands of streams end, glibc keeps
what they freed: the free chunks lie between live ones, below the top of the
heap, so its automatic trim (only the top, past ``M_TRIM_THRESHOLD``) returns
almost none of it. Measured (2,000 idle subscribers leaving an inspector):
16.5 KB of RSS kept per departed subscriber; after ``malloc_trim(0)``, which
also releases the free pages inside the heap, 7.4 KB (mostly their
subscription records, kept for resume). No gRPC option, ``MALLOC_ARENA_MAX``
or other allocator (jemalloc, mimalloc) did better.

A trim takes a few milliseconds on a heap of hundreds of MB and locks each
malloc arena while it walks it, so it runs in a thread, at most every
``min_interval_s``, ``delay_s`` after ``after`` streams ended (a mass
departure is over by then). Without glibc (musl) it does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger("doctor.heap_trim")


def glibc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of this process's C library, or None where there is none (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class HeapTrim:
    """Count ended streams (``ended``); after ``after`` of them, trim the heap ``delay_s`` later, in a thread."""

    def __init__(self, after: int = 256, delay_s: float = 1.0, min_interval_s: float = 10.0,
                 trim: Callable[[], object] | None = None) -> None:
        self.after = after
        self.delay_s = delay_s
        self.min_interval_s = min_interval_s
        self._trim = trim if trim is not None else glibc_trim()
        self.ended_since = 0  # streams ended since the last trim began
        self.trims = 0
        self.last_s = 0.0     # how long the last trim took
        self._last_at = -min_interval_s
        self._due: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None

    def ended(self, count: int = 1) -> None:
        """``count`` streams ended (their memory is freed once their calls are finished: hence the delay)."""
        if self._trim is None:
            return
        self.ended_since += count
        if self.ended_since < self.after or self._due is not None or self._running is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(self.delay_s, self._last_at + self.min_interval_s - time.monotonic())
        self._due = loop.call_later(wait, self._start)

    def _start(self) -> None:
        self._due = None
        self.ended_since = 0
        self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._trim is not None
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(self._trim)
        finally:
            self._last_at = time.monotonic()
            self.last_s = self._last_at - t0
            self.trims += 1
            self._running = None
        log.debug("heap trimmed in %.1f ms", self.last_s * 1000)
        if self.ended_since >= self.after:  # more ended meanwhile
            self.ended(0)

    async def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        running = self._running
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)  # a thread cannot be interrupted: let it finish

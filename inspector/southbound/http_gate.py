"""At most N HTTP connections served at once on the inspector's loop; the next ones wait unread, then are refused.

Bounding the requests in hand is not enough on one event loop: a report is
handled in well under a millisecond, so hundreds of keep-alive connections
sending back to back keep hundreds of callbacks ready and the loop runs
that many behind (measured: 200 connections, 190 ms late; the liveness
watch then counts no silence, ``southbound/lag.py``). So connections, not
requests, are admitted: ``serving`` at a time are read; a further one is
accepted by the kernel but not read (its transport paused: no loop time
spent on it) and waits its turn in arrival order; past ``waiting`` of those
a new one is answered 503 at once and closed. While any wait, each answer
closes its connection (``Connection: close``), so kept-alive connections
take turns with the waiting ones instead of holding their places. A waiting
connection is closed by aiohttp's keep-alive timer like any idle one, so
waiting is bounded in time too.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

from aiohttp import web


def busy_answer(serving: int, waiting: int) -> bytes:
    body = json.dumps({"error": f"busy: {serving} connections served and {waiting} waiting; retry in a moment"})
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


class GatedServer(web.Server):
    """aiohttp's low-level server, admitting connections through ``serving`` slots."""

    def __init__(self, handler: Any, *, serving: int, waiting: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.serving, self.waiting = serving, waiting
        self.active: set[web.RequestHandler] = set()
        self.queue: OrderedDict[web.RequestHandler, asyncio.Transport] = OrderedDict()
        self.refused = 0
        self._busy = busy_answer(serving, waiting)

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self.active) < self.serving:
            self.active.add(handler)
        elif len(self.queue) < self.waiting:
            transport.pause_reading()
            self.queue[handler] = transport
        else:
            self.refused += 1
            transport.write(self._busy)
            transport.close()

    def connection_lost(self, handler: web.RequestHandler, exc: BaseException | None = None) -> None:
        self.queue.pop(handler, None)
        if handler in self.active:
            self.active.discard(handler)
            while self.queue and len(self.active) < self.serving:
                nxt, transport = self.queue.popitem(last=False)
                if transport.is_closing():
                    continue
                self.active.add(nxt)
                transport.resume_reading()
        super().connection_lost(handler, exc)

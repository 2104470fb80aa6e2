"""Simulated agents for bench/scale.py: thousands of ``AgentGateway.Connect`` streams from one process.

A gRPC channel per simulated agent (grpc.aio) costs the generator more than the inspector it measures: at 10,000
the generators could not hold their own connections on this 2-core machine. Each agent here is one asyncio
protocol speaking just enough HTTP/2 by hand: the preface and settings, one request (header block encoded once by
hpack, valid on any fresh connection), a Hello, a heartbeat every ``heartbeat_ms``, and an answer to every PING
and SETTINGS the server sends. What the inspector sees is what a real agent sends: one TCP connection, one
stream, the same frames. Responses are not parsed beyond "a message arrived" and "the stream ended".
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections import Counter

import hpack

from doctor_common.api import agent_pb2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
WINDOW = 1 << 24  # what we let the server send before a WINDOW_UPDATE: more than a bench run receives
STREAM = 1
MAX_BACKOFF_S = 2.0  # agent/config.py's default max_backoff_s


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def grpc_message(msg: agent_pb2.AgentMessage) -> bytes:
    body = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def opening(authority: str) -> bytes:
    """Preface, settings (no push, a large stream window), a connection window to match, the request's headers."""
    settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, WINDOW)
    headers = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"),
                                      (":path", "/doctor.v1.AgentGateway/Connect"), (":authority", authority),
                                      ("content-type", "application/grpc"), ("te", "trailers"),
                                      ("user-agent", "doctor-bench-sim")])
    return (PREFACE + frame(SETTINGS, 0, 0, settings) + frame(0x8, 0, 0, struct.pack(">I", WINDOW - 65535))
            + frame(HEADERS, END_HEADERS, STREAM, headers))


class SimAgent(asyncio.Protocol):
    """One connection, one Connect stream. ``answered`` is set at the server's first message (the Hello was
    taken); ``ended`` when the stream or the connection ends for any reason."""

    def __init__(self, hello: bytes, opening: bytes, ping_s: float = 0.0, ping_always: bool = False) -> None:
        self.hello, self.opening = hello, opening
        self.ping_s = ping_s  # the agent's own keepalive (agent/transport.py): a PING every ping_s, 0 for none
        self.ping_always = ping_always  # even when the server pinged us within ping_s (grpclib's own keepalive)
        self._ping_timer: asyncio.TimerHandle | None = None
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.answered = asyncio.Event()
        self.ended = asyncio.Event()
        self.settled = asyncio.Event()  # answered or ended, whichever first (a refusal ends it unanswered)
        self.why = ""  # what ended it: trailers, RST_STREAM, GOAWAY, the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        transport.write(self.opening + frame(DATA, 0, STREAM, self.hello))
        if self.ping_s:
            self._ping_timer = asyncio.get_running_loop().call_later(random.uniform(0, self.ping_s), self._ping)

    def _ping(self) -> None:
        """As the real agent's keepalive: a PING ``ping_s`` after the last ping either side sent (a server ping
        re-arms it: agent/transport.py), or every ``ping_s`` whatever it receives with ``ping_always``."""
        if self.transport is None or self.ended.is_set() or self.transport.is_closing():
            return  # closing: connection_lost is on its way
        try:
            self.transport.write(frame(PING, 0, 0, struct.pack(">Q", time.monotonic_ns())))
        except RuntimeError:  # uvloop closed the handle after an error (EPIPE) before saying so: lost, on its way
            return
        self._ping_timer = asyncio.get_running_loop().call_later(self.ping_s, self._ping)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        at, n = 0, len(buf)
        while n - at >= 9:
            length = int.from_bytes(buf[at:at + 3], "big")
            if n - at - 9 < length:
                break
            kind, flags = buf[at + 3], buf[at + 4]
            if kind == PING and not flags & ACK:
                assert self.transport is not None
                if self._ping_timer is not None and not self.ping_always and not self.ended.is_set():
                    self._ping_timer.cancel()
                    self._ping_timer = asyncio.get_running_loop().call_later(self.ping_s, self._ping)
                self.transport.write(frame(PING, ACK, 0, bytes(buf[at + 9:at + 17])))
            elif kind == SETTINGS and not flags & ACK:
                assert self.transport is not None
                self.transport.write(frame(SETTINGS, ACK, 0, b""))
            elif kind == DATA and length:
                self.answered.set()
                self.settled.set()
                if flags & END_STREAM:
                    self._end("end of stream")
            elif kind == GOAWAY:  # the error code and the server's words: why it ends the connection
                code = int.from_bytes(buf[at + 13:at + 17], "big") if length >= 8 else -1
                self._end(f"GOAWAY {code} {bytes(buf[at + 17:at + 9 + length]).decode(errors='replace')[:60]}")
            elif kind == HEADERS and flags & END_STREAM or kind == RST_STREAM:
                self._end({HEADERS: "trailers", RST_STREAM: "RST_STREAM"}[kind])
            at += 9 + length
        del buf[:at]

    def heartbeat(self) -> None:
        if self.transport is not None and not self.ended.is_set() and not self.transport.is_closing():
            beat = grpc_message(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sent_unix_nanos=time.time_ns())))
            self.transport.write(frame(DATA, 0, STREAM, beat))

    def _end(self, why: str) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self.why = self.why or why
        self.ended.set()
        self.settled.set()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self.why = self.why or f"connection lost ({exc or 'closed'})"
        self.ended.set()
        self.settled.set()


class Fleet:
    """``count`` simulated agents ``sim-<first>…``, each reconnecting with the agent's backoff (doubling from
    50 ms to 2 s, jittered; admission refuses some during the storm). ``lost`` counts the streams that ended after every agent had been in once: the
    inspector dropped them."""

    def __init__(self, host: str, port: int, first: int, count: int, heartbeat_ms: int, ping_ms: int = 0,
                 ping_always: bool = False) -> None:
        self.host, self.port, self.first, self.count = host, port, first, count
        self.heartbeat_s = heartbeat_ms / 1000
        self.ping_s, self.ping_always = ping_ms / 1000, ping_always
        self.connected = 0  # Hellos answered, reconnects included
        self.lost = 0
        self.reasons: Counter[str] = Counter()  # why streams ended after every agent had been in

    async def hold(self) -> None:
        """Until cancelled."""
        tasks = [asyncio.create_task(self._agent(i)) for i in range(self.count)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _agent(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        start = opening(f"{self.host}:{self.port}")
        hello = grpc_message(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            host_id=f"sim-{self.first + i}", boot_id=f"b{self.first + i}", agent_version="bench")))
        backoff = 0.05
        for _ in range(1_000_000):  # reconnects: bounded, far beyond any run
            proto: SimAgent | None = None
            try:
                _, proto = await loop.create_connection(lambda: SimAgent(hello, start, self.ping_s, self.ping_always), self.host, self.port)
                await asyncio.wait_for(proto.settled.wait(), 30)
                if not proto.answered.is_set():
                    raise ConnectionError(f"refused: {proto.why}")  # admission's "busy": retried with backoff
                self.connected += 1
                accepted_at = time.monotonic()
                await asyncio.sleep(random.uniform(0, self.heartbeat_s))  # heartbeats spread over the interval
                while not proto.ended.is_set():
                    proto.heartbeat()
                    try:
                        await asyncio.wait_for(proto.ended.wait(), self.heartbeat_s)
                    except TimeoutError:
                        pass
                if time.monotonic() - accepted_at >= 2 * MAX_BACKOFF_S:
                    backoff = 0.05  # as agent/transport.py: a stream kept a while resets the backoff
                if self.connected >= self.count:
                    self.lost += 1
                    self.reasons[proto.why] += 1
            except (OSError, TimeoutError):
                pass
            except Exception as exc:  # noqa: BLE001 - one agent's surprise must not end the others
                self.reasons[f"generator error: {exc!r}"] += 1
            finally:
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
            await asyncio.sleep(backoff * (0.5 + random.random()))  # the agent's own backoff, up to 2 s
            backoff = min(backoff * 2, MAX_BACKOFF_S)

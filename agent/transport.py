"""The agent's stream to the inspector: Hello with the full level, then edges and heartbeats.

Reconnects with capped exponential backoff and jitter; every (re)connect sends
the whole current state first (level-triggered), then every event the
inspector has not acknowledged yet, in sequence order. A Redirect from a
follower switches to the leader it names.

The stream is gRPC (``AgentGateway/Connect``) spoken by grpclib, a gRPC client
in pure asyncio: no C-core, hence no event-engine threads waking up after
every heartbeat and keepalive, and a third of grpcio's memory (docs/agent.md,
Footprint). The inspector serves it with grpcio like any other client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from asyncio import BaseTransport
from collections.abc import Callable
from typing import NoReturn

from grpclib.client import Channel, Handler, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.protocol import H2Protocol
from grpclib.stream import recv_message
from h2.events import PingReceived

from agent.state import AgentState
from doctor_common.agent_limits import MAX_BATCH
from doctor_common.api import agent_pb2
from doctor_common.endpoint import parse_endpoint
from doctor_common.timeline import now_ns
from doctor_common.tls import ClientTls

log = logging.getLogger("doctor.agent.transport")

CONNECT = f"/{agent_pb2.DESCRIPTOR.services_by_name['AgentGateway'].full_name}/Connect"
CONNECT_TIMEOUT_S = 5.0   # TCP connect and sending the stream's headers; a black-holed inspector is left after this
# A ping unanswered this long closes the connection. (grpclib closes the asyncio transport; with bytes still
# buffered asyncio reports the loss only once they drain. The inspector's 64 KiB stream window keeps what the
# agent sends inside the kernel's buffers, so the loss is reported at once: measured, docs/agent.md.)
PING_TIMEOUT_S = 0.5

# a status that no retry can fix until someone changes a configuration
_CONFIG_ERRORS = {Status.UNAUTHENTICATED, Status.PERMISSION_DENIED, Status.NOT_FOUND, Status.INVALID_ARGUMENT}
# what ends a stream without a gRPC status: the connection lost, a reset, a frame we cannot take, our own timeout
_STREAM_ENDED = (OSError, StreamTerminatedError, ProtocolError)  # OSError covers connection errors, timeouts


class _Protocol(H2Protocol):
    """grpclib's HTTP/2 connection whose keepalive pings one interval after the last ping the inspector sent (or
    the last of its own): while the inspector pings more often (every 750 ms by default) the agent sends none,
    since the inspector's keepalive already shows the path alive both ways, and at 10,000 agents the pings it
    would answer cost it a core's tenth or more (docs/agent.md, "Liveness"). An inspector that stops pinging
    (stopped, its host gone) is pinged one interval after its last ping and left 0.5 s later, as before."""

    def connection_made(self, transport: BaseTransport) -> None:
        super().connection_made(transport)
        conn, keepalive = self.connection, self.config._keepalive_time  # grpclib 0.4 internals (pinned <0.5)
        if not keepalive:
            return

        def ping_received(_event: object) -> None:
            # our next ping is due one interval after the inspector's last one (not at grpclib's next tick, up
            # to an interval later): an inspector that stops pinging is pinged, and left, as soon as before
            if conn._ping_handle is not None and not conn.is_closing():
                conn._ping_handle.cancel()
                conn._ping_handle = asyncio.get_running_loop().call_later(keepalive, conn._ping)
        self.processor.processors[PingReceived] = ping_received


class _Channel(Channel):
    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)


def open_channel(target: str, keepalive_ms: int, tls: ClientTls | None = None) -> Channel:
    """A grpclib channel to ``host:port``, ``[v6]:port`` or ``unix:/path``, pinging every ``keepalive_ms`` unless
    the inspector pinged it meanwhile (``_Protocol``); over TLS when ``tls`` is given (its files read again if
    they changed: a renewed certificate needs no restart)."""
    host, port, path = parse_endpoint(target)
    keepalive_s = keepalive_ms / 1000
    config = Configuration(
        _keepalive_time=keepalive_s, _keepalive_timeout=PING_TIMEOUT_S, _keepalive_permit_without_calls=True,
        _http2_max_pings_without_data=0, _http2_min_sent_ping_interval_without_data=keepalive_s,
        ssl_target_name_override=tls.server_name if tls is not None else None)
    ssl = tls.ssl_context() if tls is not None else None
    if path is not None:
        return _Channel(path=path, config=config, ssl=ssl)
    return _Channel(host, port, config=config, ssl=ssl)


class AgentLink:
    def __init__(self, state: AgentState, endpoints: tuple[str, ...], token: str | None,
                 heartbeat_interval_s: float = 0.5, max_backoff_s: float = 2.0, keepalive_ms: int = 1000,
                 health: Callable[[], agent_pb2.AgentHealth] | None = None, health_interval_s: float = 30.0,
                 tls: ClientTls | None = None) -> None:
        self.state = state
        self.tls = tls
        self.beat: Callable[[], None] = lambda: None  # liveness for the watchdog: called on every turn of the loops
        self.endpoints = list(endpoints)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.keepalive_ms = keepalive_ms  # HTTP/2 pings that notice a hung inspector
        self.max_backoff_s = max_backoff_s
        self.health = health  # the agent's own health, sent after Hello and then in place of a heartbeat
        self.health_interval_s = health_interval_s
        self.connected = asyncio.Event()
        self.connects = 0
        self._redirect: str | None = None
        self._accepted = False
        self._accepted_at = 0.0
        self._stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage] | None = None
        self._writing = asyncio.Lock()  # one message at a time on the stream (the goodbye comes from outside)
        self._stopping = False
        self._ended = False  # our side of the stream is closed (the goodbye went out): nothing more to write

    async def run(self) -> None:
        backoff = 0.05
        index = 0
        while True:
            self.beat()
            target = self._redirect or self.endpoints[index % len(self.endpoints)]
            self._redirect = None
            self._accepted = self._ended = False
            try:
                await self._session(target)
                backoff = 0.05
            except GRPCError as exc:
                if exc.status in _CONFIG_ERRORS:
                    log.error("inspector %s refused this agent: %s: %s", target, exc.status.name, exc.message)
                    backoff = self.max_backoff_s
                else:
                    log.warning("stream to %s ended: %s %s", target, exc.status.name, exc.message or "")
            except _STREAM_ENDED as exc:
                if self._redirect:  # a follower sent us on: nothing failed
                    log.debug("%s redirected this agent to %s", target, self._redirect)
                else:
                    log.warning("stream to %s failed: %s", target, str(exc) or type(exc).__name__)
            except ValueError as exc:  # an endpoint (a redirect's) or a header grpclib cannot use
                log.error("cannot stream to %s: %s", target, exc)
            except Exception:  # a bug or a library surprise ends this session, never the transport loop
                log.exception("stream to %s failed unexpectedly", target)
            finally:
                self.connected.clear()
                self._stream = None
                if self._accepted and time.monotonic() - self._accepted_at >= 2 * self.max_backoff_s:
                    # a leader had kept the stream a while: only failures in a row grow the backoff. One cut off
                    # at once (an overloaded inspector's pings timing out) does not reset it: agents retrying
                    # every 50 ms would feed the storm that cut them off (bench/scale.py at 10,000 agents)
                    backoff = 0.05
            if self._stopping:
                return
            if self._redirect:
                continue  # follow the leader at once
            index += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _session(self, target: str) -> None:
        channel = open_channel(target, self.keepalive_ms, self.tls)
        try:
            stream = channel.request(CONNECT, Cardinality.STREAM_STREAM, agent_pb2.AgentMessage,
                                     agent_pb2.GatewayMessage, metadata=self.metadata)
            async with stream:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await stream.send_request()
                self._stream = stream
                await self._write(stream, self.state.hello())
                sent_up_to = 0
                pending = [e for e in self.state.unacked.values()]
                if pending:
                    await self._send_events(stream, pending)
                    sent_up_to = pending[-1].sequence
                if self.health is not None:
                    await self._write(stream, agent_pb2.AgentMessage(health=self.health()))
                self.connects += 1
                self.connected.set()
                log.info("connected to inspector %s (boot %s, %d pending events)", target, self.state.boot_id,
                         len(pending))
                await self._stream_loop(stream, sent_up_to)
        finally:
            channel.close()

    async def _send_events(self, stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage],
                           events: list[agent_pb2.Event]) -> None:
        """In batches the inspector accepts (more would end the stream: every level resent, thousands unacked)."""
        self._stamp_sent(events)
        for start in range(0, len(events), MAX_BATCH):
            batch = events[start:start + MAX_BATCH]
            await self._write(stream, agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=batch)))

    async def _stream_loop(self, stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage],
                           sent_up_to: int) -> None:
        reader = asyncio.create_task(self._read(stream))
        # wakes the loop below; the reader's error is read even when a failed write ends the loop first
        reader.add_done_callback(lambda t: self.state.changed.set() or t.cancelled() or t.exception())
        heartbeat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())
        clock = asyncio.get_running_loop()
        health_due = clock.time() + self.health_interval_s
        try:
            while not reader.done():
                self.beat()
                self.state.changed.clear()
                fresh = [e for s, e in self.state.unacked.items() if s > sent_up_to]
                if fresh:
                    await self._send_events(stream, fresh)
                    sent_up_to = fresh[-1].sequence
                    continue
                # no helper task per turn: an idle agent's cost is its heartbeats (docs/agent.md)
                try:
                    async with asyncio.timeout(self.heartbeat_interval_s):
                        await self.state.changed.wait()
                except TimeoutError:
                    if self.health is not None and clock.time() >= health_due:
                        health_due = clock.time() + self.health_interval_s
                        await self._write(stream, agent_pb2.AgentMessage(health=self.health()))
                        continue  # any message tells the inspector the agent lives: this one stands for a heartbeat
                    heartbeat.heartbeat.sent_unix_nanos = now_ns()
                    await self._write(stream, heartbeat)
            await reader  # re-raise the stream's end
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _write(self, stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage],
                     msg: agent_pb2.AgentMessage, end: bool = False) -> None:
        async with self._writing:
            if self._ended:
                return  # after our goodbye only the inspector's end of the stream is awaited
            await stream.send_message(msg, end=end)
            self._ended = end

    @staticmethod
    def _stamp_sent(events: list[agent_pb2.Event]) -> None:
        now = now_ns()
        for e in events:
            if not e.sent_unix_nanos:
                e.sent_unix_nanos = now

    async def _read(self, stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage]) -> None:
        while True:
            try:
                msg = await stream.recv_message()  # raises GRPCError when the inspector ends with an error status
            except StreamTerminatedError:
                await self._read_what_came_with_the_reset(stream)
                raise
            if msg is None:
                await self._closed_by_inspector(stream)
            self._handle(msg)

    async def _read_what_came_with_the_reset(self, stream: Stream[agent_pb2.AgentMessage,
                                                                  agent_pb2.GatewayMessage]) -> None:
        """Messages that arrived together with the stream's end and reset.

        grpcio ends a stream the client still writes to with its last messages, the trailers and RST_STREAM in
        one write; grpclib then cancels the pending read and the messages, a Redirect among them, stay unread.
        Once the trailers are in, reading the buffer cannot block. (grpclib internals: pinned below 0.5.)
        """
        h2_stream = stream._stream
        if h2_stream is None or h2_stream.trailers is None:
            return
        while (msg := await recv_message(h2_stream, stream._codec, agent_pb2.GatewayMessage)) is not None:
            self._handle(msg)  # type: ignore[arg-type]

    def _handle(self, msg: agent_pb2.GatewayMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "ack":
            self.state.ack(msg.ack.sequence)
        elif kind == "redirect":
            log.info("inspector redirects to leader %s", msg.redirect.leader_endpoint)
            self._redirect = msg.redirect.leader_endpoint or None
            raise ConnectionError("redirected")
        elif kind == "resync":
            log.info("the inspector asks for every component's level again")
            self.state.resend_levels(time.time_ns())
        elif kind == "config":
            self._accepted = True  # the inspector took the stream (only a leader sends its config)
            self._accepted_at = time.monotonic()
            if msg.config.heartbeat_interval_ms:
                self.heartbeat_interval_s = msg.config.heartbeat_interval_ms / 1000

    async def _closed_by_inspector(self, stream: Stream[agent_pb2.AgentMessage, agent_pb2.GatewayMessage]) -> NoReturn:
        """The inspector ended the stream: raise its status (GRPCError), or ConnectionError if it was OK."""
        async with self._writing:
            if not self._ended:  # our goodbye may have ended our side already
                await stream.end()  # grpclib hands out the trailers only once both sides are done
                self._ended = True
        await stream.recv_trailing_metadata()
        raise ConnectionError("inspector closed the stream")

    async def goodbye(self, reason: str) -> None:
        """Orderly stop: tell the inspector, so it does not raise an agent-down alarm."""
        self._stopping = True
        stream = self._stream
        if stream is not None and self.connected.is_set():
            try:
                async with asyncio.timeout(1.0):
                    await self._write(stream, agent_pb2.AgentMessage(goodbye=agent_pb2.Goodbye(reason=reason)),
                                      end=True)
            except (GRPCError, *_STREAM_ENDED) as exc:
                log.debug("goodbye not delivered: %s", exc)

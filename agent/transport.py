"""The agent's stream to the inspector: Hello with the full level, then edges and heartbeats.

Reconnects with capped exponential backoff and jitter; every (re)connect sends
the whole current state first (level-triggered), then every event the
inspector has not acknowledged yet, in sequence order. A Redirect from a
follower switches to the leader it names.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import grpc

from agent.state import AgentState
from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.grpcutil import auth_metadata, channel_options
from doctor_common.timeline import now_ns

log = logging.getLogger("doctor.agent.transport")

# a status that no retry can fix until someone changes a configuration
_CONFIG_ERRORS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}


class AgentLink:
    def __init__(self, state: AgentState, endpoints: tuple[str, ...], token: str | None,
                 heartbeat_interval_s: float = 0.5, max_backoff_s: float = 2.0, keepalive_ms: int = 1000) -> None:
        self.state = state
        self.beat: Callable[[], None] = lambda: None  # liveness for the watchdog: called on every turn of the loops
        self.endpoints = list(endpoints)
        self.token = token
        self.heartbeat_interval_s = heartbeat_interval_s
        self.keepalive_ms = keepalive_ms  # HTTP/2 pings that notice a hung inspector (and cost CPU)
        self.max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.connects = 0
        self._redirect: str | None = None
        self._accepted = False
        self._call: grpc.aio.StreamStreamCall | None = None
        self._stopping = False

    async def run(self) -> None:
        backoff = 0.05
        index = 0
        while True:
            self.beat()
            target = self._redirect or self.endpoints[index % len(self.endpoints)]
            self._redirect = None
            self._accepted = False
            try:
                await self._session(target)
                backoff = 0.05
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in _CONFIG_ERRORS:
                    log.error("inspector %s refused this agent: %s: %s", target, code.name, exc.details())
                    backoff = self.max_backoff_s
                else:
                    log.warning("stream to %s ended: %s %s", target, code.name, exc.details() or "")
            except (ConnectionError, OSError, asyncio.InvalidStateError) as exc:  # the last: ended under a write
                log.warning("stream to %s failed: %s", target, exc or type(exc).__name__)
            finally:
                self.connected.clear()
                self._call = None
                if self._accepted:  # a leader had taken the stream: only consecutive failures grow the backoff
                    backoff = 0.05
            if self._stopping:
                return
            if self._redirect:
                continue  # follow the leader at once
            index += 1
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _session(self, target: str) -> None:
        async with grpc.aio.insecure_channel(target, options=channel_options(self.keepalive_ms)) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            call = stub.Connect(metadata=auth_metadata(self.token), wait_for_ready=False)
            self._call = call
            await call.write(self.state.hello())
            sent_up_to = 0
            pending = [e for e in self.state.unacked.values()]
            if pending:
                self._stamp_sent(pending)
                await call.write(agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=pending)))
                sent_up_to = pending[-1].sequence
            self.connects += 1
            self.connected.set()
            log.info("connected to inspector %s (boot %s, %d pending events)", target, self.state.boot_id, len(pending))
            reader = asyncio.create_task(self._read(call))
            # wakes the loop below; the reader's error is read even when a failed write ends the loop first
            reader.add_done_callback(lambda t: self.state.changed.set() or t.cancelled() or t.exception())
            heartbeat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())
            try:
                while not reader.done():
                    self.beat()
                    self.state.changed.clear()
                    fresh = [e for s, e in self.state.unacked.items() if s > sent_up_to]
                    if fresh:
                        self._stamp_sent(fresh)
                        await call.write(agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=fresh)))
                        sent_up_to = fresh[-1].sequence
                        continue
                    # no helper task per turn: an idle agent's cost is its heartbeats (docs/agent.md)
                    try:
                        async with asyncio.timeout(self.heartbeat_interval_s):
                            await self.state.changed.wait()
                    except TimeoutError:
                        heartbeat.heartbeat.sent_unix_nanos = now_ns()
                        await call.write(heartbeat)
                await reader  # re-raise the stream's end
            finally:
                reader.cancel()
                call.cancel()

    @staticmethod
    def _stamp_sent(events: list[agent_pb2.Event]) -> None:
        now = now_ns()
        for e in events:
            if not e.sent_unix_nanos:
                e.sent_unix_nanos = now

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                await call  # raises AioRpcError carrying the server's status
                raise ConnectionError("inspector closed the stream")
            kind = msg.WhichOneof("kind")
            if kind == "ack":
                self.state.ack(msg.ack.sequence)
            elif kind == "redirect":
                log.info("inspector redirects to leader %s", msg.redirect.leader_endpoint)
                self._redirect = msg.redirect.leader_endpoint or None
                raise ConnectionError("redirected")
            elif kind == "config":
                self._accepted = True  # the inspector took the stream (only a leader sends its config)
                if msg.config.heartbeat_interval_ms:
                    self.heartbeat_interval_s = msg.config.heartbeat_interval_ms / 1000

    async def goodbye(self, reason: str) -> None:
        """Orderly stop: tell the inspector, so it does not raise an agent-down alarm."""
        self._stopping = True
        call = self._call
        if call is not None and self.connected.is_set():
            try:
                await asyncio.wait_for(call.write(agent_pb2.AgentMessage(goodbye=agent_pb2.Goodbye(reason=reason))), 1.0)
                await asyncio.wait_for(call.done_writing(), 1.0)
            except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError) as exc:
                log.debug("goodbye not delivered: %s", exc)

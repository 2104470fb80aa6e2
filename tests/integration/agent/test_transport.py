"""The agent's stream (grpclib) against real grpcio gateways: a frozen inspector, statuses, goodbye, redirects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpclib.const import Cardinality

from agent.checkers.base import Reading, Status
from agent.state import AgentState
from agent.transport import CONNECT, AgentLink, open_channel
from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2
from doctor_common.grpcutil import server_options
from doctor_common.lab.cloud import wait_for

GATEWAY = [sys.executable, "-m", "tests.integration.agent.gateway"]


class Gateway:
    """tests/integration/agent/gateway.py in its own process, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint

    async def expect(self, prefix: str, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, f"gateway exited before saying {prefix!r}"
                if line.startswith(prefix):
                    return line.strip()


@asynccontextmanager
async def gateway_process(sock: Path, *args: str) -> AsyncIterator[Gateway]:
    proc = await asyncio.create_subprocess_exec(*GATEWAY, "--listen", f"unix:{sock}", *args,
                                                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        gw = Gateway(proc, f"unix:{sock}")
        await gw.expect("listening", 30.0)
        yield gw
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have died: the test says why
            proc.send_signal(signal.SIGCONT)  # a stopped process does not act on SIGKILL until continued
            proc.kill()
        await proc.wait()


def fault(component: str = "nic:eth0") -> Reading:
    return Reading(component, Status.FAULT, "compute.host.nic.link_down", common_pb2.SEVERITY_CRITICAL, "link down")


@asynccontextmanager
async def running(link: AgentLink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_frozen_inspector_is_left_for_the_next_and_nothing_is_lost(tmp_path: Path) -> None:
    """SIGSTOP the inspector the agent streams to: its keepalive pings go unanswered, the agent moves to the
    next endpoint, and an event raised while the first was frozen arrives there."""
    async with gateway_process(tmp_path / "a.sock") as a, gateway_process(tmp_path / "b.sock") as b:
        state = AgentState("compute-1", "test")
        link = AgentLink(state, (a.endpoint, b.endpoint), None, heartbeat_interval_s=0.1, keepalive_ms=200)
        async with running(link):
            assert await a.expect("hello") == "hello compute-1"
            a.proc.send_signal(signal.SIGSTOP)
            sequence = state.update("nic", fault()).sequence  # type: ignore[union-attr]
            assert await b.expect("hello") == "hello compute-1"
            assert await b.expect("events") == f"events {sequence}"
            await wait_for(lambda: not state.unacked, 5, 0.01, "b to ack the event")
            assert link.connects == 2


Handler = Callable[[AsyncIterator[agent_pb2.AgentMessage], grpc.aio.ServicerContext],
                   AsyncIterator[agent_pb2.GatewayMessage]]


@asynccontextmanager
async def gateway_in_process(connect: Handler) -> AsyncIterator[str]:
    servicer = agent_pb2_grpc.AgentGatewayServicer()
    servicer.Connect = connect  # type: ignore[method-assign]
    server = grpc.aio.server(options=server_options())
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10.0) -> logging.LogRecord:
    return await wait_for(lambda: next((r for r in caplog.records if text in r.getMessage()), None),
                          timeout, 0.01, f"a log line with {text!r}")


@pytest.mark.parametrize("code, logged, level", [
    (grpc.StatusCode.UNAUTHENTICATED, "refused this agent: UNAUTHENTICATED: unknown token for compute-1",
     logging.ERROR),
    (grpc.StatusCode.FAILED_PRECONDITION, "ended: FAILED_PRECONDITION unknown token for compute-1", logging.WARNING),
])
async def test_the_inspectors_status_is_logged_and_retried(caplog: pytest.LogCaptureFixture, code: grpc.StatusCode,
                                                          logged: str, level: int) -> None:
    """The inspector's status and message reach the agent's log; a configuration error is an ERROR."""
    calls = 0

    async def connect(requests: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        nonlocal calls
        calls += 1
        first = await anext(aiter(requests))
        await context.abort(code, f"unknown token for {first.hello.host_id}")
        yield agent_pb2.GatewayMessage()  # never reached: makes this a generator

    caplog.set_level(logging.INFO, "doctor.agent.transport")
    async with gateway_in_process(connect) as endpoint:
        link = AgentLink(AgentState("compute-1", "test"), (endpoint,), "a-token", max_backoff_s=0.2)
        async with running(link):
            record = await wait_for_log(caplog, logged)
            assert record.levelno == level
            await wait_for(lambda: calls >= 2, 10, 0.01, "the agent to try again")


async def test_goodbye_reaches_the_inspector_and_ends_the_stream() -> None:
    """goodbye() sends Goodbye and half-closes: the inspector's request stream ends; the link stops."""
    seen: list[str] = []
    ended = asyncio.Event()

    async def connect(requests: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        async for msg in requests:
            seen.append(msg.WhichOneof("kind"))
            if msg.WhichOneof("kind") == "hello":
                yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=50))
        ended.set()

    async with gateway_in_process(connect) as endpoint:
        link = AgentLink(AgentState("compute-1", "test"), (endpoint,), None)
        async with running(link) as task:
            await wait_for(lambda: link.connected.is_set() and "heartbeat" in seen, 10, 0.01, "a heartbeat")
            await link.goodbye("agent stopping")
            async with asyncio.timeout(10):
                await ended.wait()
                await task  # run() returns once the stream is over
    assert seen[0] == "hello" and seen[-1] == "goodbye"


async def test_a_redirect_is_followed_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A follower (its own process, as in production) answers Hello with a Redirect and ends the stream: the
    agent goes to the leader it names at once, every time. (grpcio sends the Redirect, the trailers and a reset
    in one write; a client that reads only until the reset loses the Redirect.)"""
    caplog.set_level(logging.INFO, "doctor.agent.transport")
    async with gateway_process(tmp_path / "leader.sock") as leader, \
            gateway_process(tmp_path / "follower.sock", "--redirect-to", f"unix:{tmp_path / 'leader.sock'}") as f:
        for attempt in range(10):
            link = AgentLink(AgentState(f"compute-{attempt}", "test"), (f.endpoint,), None, max_backoff_s=30)
            async with running(link):
                assert await f.expect("hello") == f"hello compute-{attempt}"
                assert await leader.expect("hello") == f"hello compute-{attempt}"
    lost = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lost == []


async def test_a_redirect_nobody_can_dial_is_logged_and_the_agent_carries_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Redirect to an endpoint the agent cannot use is an ERROR naming it; the agent goes back to its own list."""
    caplog.set_level(logging.INFO, "doctor.agent.transport")
    async with gateway_process(tmp_path / "f.sock", "--redirect-to", "unix-abstract:doctor") as f:
        link = AgentLink(AgentState("compute-1", "test"), (f.endpoint,), None, max_backoff_s=0.1)
        async with running(link) as task:
            assert await f.expect("hello") == "hello compute-1"
            record = await wait_for_log(caplog, "cannot stream to unix-abstract:doctor: endpoint")
            assert record.levelno == logging.ERROR and "unix-abstract: form is not supported" in record.getMessage()
            assert await f.expect("hello") == "hello compute-1"  # back to the configured endpoint
            assert not task.done()


async def test_a_stream_cut_off_at_once_does_not_reset_the_backoff() -> None:
    """An inspector that takes each stream and cuts it at once (overloaded: its pings timing out) is not redialled
    every 50 ms: only a stream kept a while (twice the maximum backoff) resets the backoff, so the retries of a
    reconnect storm spread out instead of feeding it."""
    calls: list[float] = []

    async def connect(requests: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        calls.append(time.monotonic())
        await anext(aiter(requests))
        yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=500))  # taken
        await context.abort(grpc.StatusCode.UNAVAILABLE, "cut off")

    async with gateway_in_process(connect) as endpoint:
        link = AgentLink(AgentState("compute-1", "test"), (endpoint,), None, max_backoff_s=0.4)
        async with running(link):
            await wait_for(lambda: len(calls) >= 7, 20, 0.01, "seven streams")
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    # the backoff doubled from 50 ms to its 0.4 s cap (each wait jittered by ×0.5–1.5): had each taken stream
    # reset it, every gap would be about 50 ms
    assert min(gaps[-3:]) >= 0.2 - 0.01, gaps


class _Quiet(agent_pb2_grpc.AgentGatewayServicer):
    """Takes a Hello, then reads until the stream ends."""

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for msg in request_iterator:
            if msg.WhichOneof("kind") == "hello":
                yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=100))


@pytest.mark.parametrize(("server_keepalive_ms", "pings"), [(100, "none"), (600_000, "every interval")])
async def test_the_agent_pings_only_an_inspector_that_does_not_ping_it(monkeypatch: pytest.MonkeyPatch,
                                                                       server_keepalive_ms: int, pings: str) -> None:
    """The inspector's keepalive shows the path alive both ways: while it pings, the agent sends no pings of its
    own (at 10,000 agents the inspector would answer 10,000 a second); an inspector that does not ping is pinged
    every keepalive interval, as before."""
    import h2.connection
    sent: list[float] = []
    real_ping = h2.connection.H2Connection.ping

    def counting(self, opaque_data):  # type: ignore[no-untyped-def]
        sent.append(time.monotonic())
        return real_ping(self, opaque_data)
    monkeypatch.setattr(h2.connection.H2Connection, "ping", counting)
    server = grpc.aio.server(options=server_options(keepalive_ms=server_keepalive_ms, ping_timeout_ms=1000))
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(_Quiet(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", 500 if pings == "none" else 200)
    try:
        stream = channel.request(CONNECT, Cardinality.STREAM_STREAM, agent_pb2.AgentMessage, agent_pb2.GatewayMessage)
        async with stream:
            await stream.send_message(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="h", boot_id="b")))
            assert (await asyncio.wait_for(stream.recv_message(), 10)) is not None
            start = time.monotonic()
            await asyncio.sleep(1.5)  # the span observed: 3 or 7 of the agent's keepalive intervals (not a wait)
            during = [t for t in sent if t >= start]
            if pings == "none":
                assert during == []
            else:
                assert len(during) >= 4, during
            await stream.cancel()
    finally:
        channel.close()
        await server.stop(0)


async def test_an_inspector_that_stops_pinging_is_left_one_interval_after_its_last_ping(tmp_path: Path) -> None:
    """The inspector pings every 100 ms, so the agent (keepalive 1 s) sends none; stopped (SIGSTOP), it pings
    nothing more: the agent pings one interval after its last ping and leaves when that goes unanswered 0.5 s
    later — about 1.5 s, not up to an interval more."""
    async with gateway_process(tmp_path / "gw.sock", "--keepalive-ms", "100") as gw:
        channel = open_channel(gw.endpoint, 1000)
        try:
            stream = channel.request(CONNECT, Cardinality.STREAM_STREAM, agent_pb2.AgentMessage,
                                     agent_pb2.GatewayMessage)
            async with stream:
                await stream.send_message(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="h", boot_id="b")))
                assert (await asyncio.wait_for(stream.recv_message(), 10)) is not None
                await gw.expect("hello")
                stopped = time.monotonic()
                gw.proc.send_signal(signal.SIGSTOP)
                with pytest.raises(Exception):  # noqa: B017 - grpclib's end of a connection lost to its keepalive
                    async with asyncio.timeout(10):
                        await stream.recv_message()
                left = time.monotonic() - stopped
        finally:
            channel.close()
    assert left < 2.2, f"left a stopped inspector after {left:.2f} s"

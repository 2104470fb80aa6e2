"""PUT/POST /events: the listener's answers, each status with what to fix, over real HTTP on loopback.

The gateway is the real one (its checks, the token rule, the hand-over); what it hands on is collected where
the inspector would respond, and the leadership is a switch the test flips.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller_adapter.base import NotFound
from doctor_common.api import agent_pb2
from doctor_common.auth import Principal, TokenAuth
from doctor_common.config import ConfigError, Section
from inspector.response.trigger import Trigger
from inspector.southbound.gateway import AgentGatewayServicer
from inspector.southbound.http_events import HttpEvents, HttpEventsConfig
from inspector.southbound.liveness import HostRecord, Liveness
from inspector.southbound.messages import trigger_from_state

HOSTS = ("compute-1", "compute-2")
AGENT = {"compute-1": "token-c1", "compute-2": "token-c2"}


def event(host: str = "compute-1", kind: str = "compute.host.down", **details: str) -> dict[str, Any]:
    return {"time": "2026-12-03T09:00:00Z", "type": kind, "details": {"hostname": host, **details}}


@dataclass
class Gate:
    leading: bool = True
    leader: str | None = None

    def epoch(self) -> int | None:
        return 1 if self.leading else None

    def agent_redirect(self) -> str | None:
        return self.leader


@dataclass
class Listener:
    url: str
    server: HttpEvents
    gate: Gate
    taken: list[Trigger] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)

    async def send(self, body: Any, token: str | None = "token-c1", method: str = "PUT",
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as s, s.request(method, self.url, data=data, headers=h) as r:
            return r.status, await r.json()


async def make_listener(**cfg: Any) -> tuple[Listener, HttpEvents]:
    auth = TokenAuth({"token-admin": Principal("noc", admin=True), "token-a": Principal("a", project="project-a")},
                     {t: h for h, t in AGENT.items()})
    gate = Gate()
    taken: list[Trigger] = []
    lookups: list[str] = []

    async def known(host: str) -> None:
        lookups.append(host)
        if host not in HOSTS:
            raise NotFound(host)

    def on_state(rec: HostRecord, state: agent_pb2.ComponentState, observed: int, sent: int, received: int) -> None:
        taken.append(trigger_from_state(rec.host_id, state, observed, sent, received))

    gateway = AgentGatewayServicer(auth, Liveness(1.0, lambda *_: asyncio.sleep(0)), known, on_state, 500, gate)
    server = HttpEvents(HttpEventsConfig(host="127.0.0.1", port=0, **cfg), gateway, auth)
    await server.start()
    return Listener(f"http://127.0.0.1:{server.port}/events", server, gate, taken, lookups), server


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    lst, server = await make_listener(max_body_bytes=4096, request_timeout_s=0.3, idle_timeout_s=0.3)
    try:
        yield lst
    finally:
        await server.stop()


async def test_one_event_and_a_bulk_are_taken_by_put_and_post(listener: Listener) -> None:
    """The seeds' single event (PUT), their 'events' bulk (POST) and Doctor's bare list are each taken whole, and
    the answer says how many."""
    assert await listener.send({"event": event()}) == (200, {"accepted": 1})
    assert await listener.send({"events": [{"event": event(kind="compute.host.nic.error")}, event(status="up")]},
                               method="POST") == (200, {"accepted": 2})
    assert await listener.send([event(monitor="monitor_sample")], headers={"X-Auth-Token": "token-c1"},
                               token=None) == (200, {"accepted": 1})
    assert [(t.host, t.fault_type) for t in listener.taken] == [
        ("compute-1", "compute.host.down"), ("compute-1", "compute.host.nic.error"), ("compute-1", ""),
        ("compute-1", "compute.host.down")]


@pytest.mark.parametrize("body, status, words", [
    (b'{"event": {"time": ', 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    ({"event": {"type": "compute.host.down", "details": {"hostname": "compute-1"}}}, 400, "needs string 'time'"),
    ({"events": [event(), event(severity="doom")]}, 400, "events[1].details.severity"),
    ({"events": [event(), event(host="compute-9")]}, 403, "events[1].details.hostname: this agent's token belongs "
                                                           "to host 'compute-1', not 'compute-9'"),
])
async def test_a_bad_report_is_refused_whole_naming_the_entry(listener: Listener, body: Any, status: int,
                                                              words: str) -> None:
    """Bad JSON, bad encoding or one bad entry of a bulk: the status, the entry and field named, nothing taken."""
    got, answer = await listener.send(body)
    assert got == status and words in answer["error"]
    assert listener.taken == []


async def test_an_unknown_host_is_named(listener: Listener) -> None:
    """With anonymous agents allowed, an event about a host the controller does not know is refused, named."""
    listener.server.auth.allow_anonymous_agents = True
    got, answer = await listener.send({"events": [event("compute-2"), event("ghost")]}, token=None)
    assert got == 400 and "events[1].details.hostname: host 'ghost' is not in the controller's inventory" in \
        answer["error"]
    assert listener.taken == [] and listener.lookups == ["compute-2", "ghost"]


@pytest.mark.parametrize("token, status, words", [
    (None, 401, "missing credentials"),
    ("not-a-token", 401, "unknown token"),
    ("token-admin", 403, "consumer's token"),
    ("token-a", 403, "consumer's token"),
    ("token-c2", 403, "belongs to host 'compute-2', not 'compute-1'"),
])
async def test_only_the_hosts_own_agent_token_may_report(listener: Listener, token: str | None, status: int,
                                                         words: str) -> None:
    """No token, an unknown one, a consumer's (administrator's too) or another host's agent token: refused,
    nothing taken, no host looked up."""
    got, answer = await listener.send({"event": event()}, token=token)
    assert got == status and words in answer["error"]
    assert listener.taken == [] and listener.lookups == []


async def test_other_methods_and_paths_are_told_what_exists(listener: Listener) -> None:
    """GET and DELETE /events: 405 naming PUT and POST; another path: 404 naming /events."""
    for method in ("GET", "DELETE", "PATCH"):
        async with aiohttp.ClientSession() as s, s.request(method, listener.url) as r:
            assert r.status == 405 and r.headers["Allow"] == "PUT, POST"
            assert "PUT or POST /events" in (await r.json())["error"]
    async with aiohttp.ClientSession() as s, s.put(listener.url.replace("/events", "/v1/events"), data=b"{}") as r:
        assert r.status == 404 and "/events" in (await r.json())["error"]


async def test_a_body_over_the_limit_is_413(listener: Listener) -> None:
    """Over max_body_bytes, declared (Content-Length) or streamed (chunked): 413, nothing taken."""
    big = {"events": [event(cause="x" * 200) for _ in range(40)]}
    got, answer = await listener.send(big)
    assert got == 413 and "over 4096 bytes" in answer["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with aiohttp.ClientSession() as s, s.put(listener.url, data=chunks(),
                                                    headers={"Authorization": "Bearer token-c1"}) as r:
        assert r.status == 413 and "over 4096 bytes" in (await r.json())["error"]
    assert listener.taken == []


async def test_a_follower_answers_503_naming_the_leader(listener: Listener) -> None:
    """Not leading: 503 with Retry-After and where the leader is; none known: said so. Nothing taken."""
    listener.gate.leading, listener.gate.leader = False, "10.0.0.2:50051"
    got, answer = await listener.send({"event": event()})
    assert got == 503 and answer["leader"] == "10.0.0.2:50051" and "10.0.0.2:50051" in answer["error"]
    listener.gate.leader = None
    got, answer = await listener.send({"event": event()})
    assert got == 503 and "none is elected yet" in answer["error"] and "leader" not in answer
    assert listener.taken == []


async def until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.005)


async def open_raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    if data:
        await asyncio.get_running_loop().sock_sendall(sock, data)
    return sock


PARTIAL = b"PUT /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-c1\r\nContent-Length: 100\r\n\r\n{"


async def test_a_slow_body_is_cut_off_and_an_idle_connection_closed(listener: Listener) -> None:
    """A client that sends its headers and then too little of its body gets 408 after request_timeout; one that
    never completes its headers is disconnected after idle_timeout. Neither holds a place afterwards."""
    loop = asyncio.get_running_loop()
    with await open_raw(listener.server.port, PARTIAL) as slow:
        async with asyncio.timeout(5):
            reply = await loop.sock_recv(slow, 4096)
        assert reply.startswith(b"HTTP/1.1 408") and b"within 300 ms" in reply
    with await open_raw(listener.server.port, b"PUT /events HTTP/1.1\r\nHost: x\r\n") as idle:
        async with asyncio.timeout(5):
            assert await loop.sock_recv(idle, 4096) == b"", "the connection is closed"
    gate = listener.server.server
    assert gate is not None
    await until(lambda: not gate.active and not gate.queue, "the closed connections still held places")
    assert await listener.send({"event": event()}) == (200, {"accepted": 1})


async def test_connections_beyond_the_bound_wait_unread_and_then_are_refused() -> None:
    """max_connections = 2, max_waiting = 1, two connections in hand (their bodies still coming): a third
    connection's report waits, unread, and is not answered; a fourth connection is answered 503 'busy' at once.
    Once one of the two ends, the waiting report is read and taken."""
    lst, server = await make_listener(max_connections=2, max_waiting=1, request_timeout_s=5.0)
    gate = server.server
    assert gate is not None
    loop = asyncio.get_running_loop()
    holders = [await open_raw(server.port, PARTIAL) for _ in range(2)]
    try:
        await until(lambda: len(gate.active) == 2, "the two connections never got in")
        waiting = asyncio.create_task(lst.send({"event": event()}))
        await until(lambda: len(gate.queue) == 1, "the third connection never waited")
        with await open_raw(server.port, b"") as fourth:
            async with asyncio.timeout(5):
                reply = await loop.sock_recv(fourth, 4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"busy: 2 connections served and 1 waiting" in reply
        assert gate.refused == 1 and not waiting.done() and lst.taken == []
        holders.pop().close()
        async with asyncio.timeout(5):
            assert await waiting == (200, {"accepted": 1})
        assert len(lst.taken) == 1
    finally:
        for h in holders:
            h.close()
        await server.stop()


async def test_an_address_in_use_names_the_setting(listener: Listener) -> None:
    """A second listener on a port already taken fails to start, naming [http_events] listen and the address."""
    taken = HttpEventsConfig(host="127.0.0.1", port=listener.server.port)
    with pytest.raises(OSError, match=rf"\[http_events\] listen 127.0.0.1:{listener.server.port}: .*in use"):
        await HttpEvents(taken, listener.server.gateway, listener.server.auth).start()


@pytest.mark.parametrize("table, key, words", [
    ('listen = "12346"', "http_events.listen", "expected host:port"),
    ('listen = "127.0.0.1:99999"', "http_events.listen", "expected host:port"),
    ('listen = "127.0.0.1:0"\nmax_body_bytes = 4194304', "http_events.max_body_bytes", "at most"),
    ('listen = "127.0.0.1:0"\nmax_connection = 4', "http_events", "max_connection"),
    ('listen = "127.0.0.1:0"\nmax_connections = 0', "http_events.max_connections", "at least 1"),
    ("max_connections = 4", "http_events.listen", "is required"),
])
def test_a_bad_table_names_file_and_key(tmp_path: Path, table: str, key: str, words: str) -> None:
    """Each mistake in [http_events] fails at start-up naming the file and the key."""
    path = tmp_path / "inspector.toml"
    path.write_text(f"[http_events]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        HttpEventsConfig.from_section(Section.load(path).section("http_events"))
    assert str(path) in str(err.value) and key in str(err.value) and words in str(err.value)

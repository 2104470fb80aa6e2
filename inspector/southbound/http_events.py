"""The seeds' southbound over HTTP: ``PUT``/``POST /events`` with the monitors' JSON event, on a listener of its own.

OPNFV Doctor's monitors report by one HTTP request (the sample monitor PUTs a
list of events to ``<inspector>/events``; the seeds' bulk form is "multiple
events in a single HTTP POST"). Here the body goes through exactly what
``AgentGateway.ReportJson`` does (``AgentGatewayServicer.take_json``): the
same checks, the same agent-token rule (a token speaks for its own host
only), the same hand-over to the responder. A report is taken whole or not
at all: the first bad event is named (``events[3].time ...``) and nothing of
the report is handed on.

Answers: 200 ``{"accepted": n}``; 400 bad JSON or field (named); 401 no or
unknown token; 403 a token that may not speak for the host, or a consumer's
token; 404 another path; 405 another method; 408 a body slower than
``request_timeout_ms``; 413 a body over ``max_body_bytes``; 503 not the
leader (``leader`` names where it is, when known), or busy. Each error body
is ``{"error": "<what to fix>"}``.

Bounded: connections served at once and waiting (``southbound/http_gate.py``:
a flood cannot hold the loop), body size, the time a body may take, and the
time a connection may stay without a complete request (aiohttp's keep-alive
timer runs from the connection's start, so a client trickling its headers is
cut off too).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from doctor_common.auth import TokenAuth
from doctor_common.config import Section
from inspector.southbound.gateway import MAX_JSON_BYTES, AgentGatewayServicer, ForeignHost, NotLeading, UnknownHost
from inspector.southbound.http_gate import GatedServer
from inspector.southbound.messages import BadMessage

log = logging.getLogger("doctor.inspector.http_events")

METHODS = ("PUT", "POST")
RETRY_AFTER_S = "1"


@dataclass(frozen=True)
class HttpEventsConfig:
    host: str
    port: int                          # 0: any free port (tests)
    max_body_bytes: int = MAX_JSON_BYTES
    max_connections: int = 16          # served at once; the next ones wait unread
    max_waiting: int = 256             # waiting beyond this: answered 503 at once
    request_timeout_s: float = 5.0     # from the request's headers to its whole body
    idle_timeout_s: float = 10.0       # a connection without a complete request is closed after this

    @classmethod
    def from_section(cls, s: Section) -> "HttpEventsConfig":
        """Read and validate an ``[http_events]`` table; errors name file and key."""
        listen = s.str("listen")
        host, sep, port = listen.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not (port.isascii() and port.isdigit() and int(port) < 65536):
            raise s.error("listen", f"expected host:port (e.g. \"127.0.0.1:12346\", \"[::1]:12346\"), got {listen!r}")
        cfg = cls(host=host, port=int(port),
                  max_body_bytes=s.int("max_body_bytes", MAX_JSON_BYTES, min=1024, max=MAX_JSON_BYTES),
                  max_connections=s.int("max_connections", 16, min=1, max=10_000),
                  max_waiting=s.int("max_waiting", 256, min=0, max=100_000),
                  request_timeout_s=s.int("request_timeout_ms", 5000, min=10, max=600_000) / 1000,
                  idle_timeout_s=s.int("idle_timeout_ms", 10_000, min=10, max=3_600_000) / 1000)
        s.done()
        return cfg


def _answer(status: int, error: str, **headers: str) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def bearer(request: web.BaseRequest) -> str | None:
    """The caller's token: ``Authorization: Bearer <token>``, or OpenStack's ``X-Auth-Token`` header (what
    Doctor's monitors send)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-Auth-Token", "").strip() or None


class HttpEvents:
    """The listener: started and stopped with the inspector, on its event loop."""

    def __init__(self, cfg: HttpEventsConfig, gateway: AgentGatewayServicer, auth: TokenAuth,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.auth = auth
        self.ssl_context = ssl_context  # the hook for TLS (and client certificates): TCPSite serves it as given
        self.port = 0
        self.server: GatedServer | None = None
        self._runner: web.ServerRunner | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.cfg.max_body_bytes

        def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=limit)

        self.server = GatedServer(self._route, serving=self.cfg.max_connections, waiting=self.cfg.max_waiting,
                                  request_factory=request, access_log=None, keepalive_timeout=self.cfg.idle_timeout_s,
                                  max_line_size=8190, max_field_size=8190,
                                  lingering_time=1.0)  # an unread body after a refusal: drained 1 s at most
        runner = web.ServerRunner(self.server, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.cfg.host, self.cfg.port, ssl_context=self.ssl_context, backlog=128)
            await site.start()
        except BaseException as exc:
            await runner.cleanup()
            if isinstance(exc, OSError):  # the address taken or not ours: say which setting
                raise OSError(exc.errno, f"[http_events] listen {self.cfg.host}:{self.cfg.port}: "
                                         f"{exc.strerror or exc}") from exc
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("monitors' JSON events over HTTP on %s:%d/events", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/events":
            return _answer(404, f"no resource {request.path!r}: monitors report with PUT or POST /events")
        if request.method not in METHODS:
            return _answer(405, f"{request.method} is not allowed: report events with PUT or POST /events",
                           Allow=", ".join(METHODS))
        try:
            resp = await self._report(request)
        except Exception:  # noqa: BLE001 - nothing a client sends may take the listener down
            log.exception("HTTP events report from %s failed", request.remote)
            resp = _answer(500, "internal error: the inspector's log says more; report again")
        if self.server is not None and self.server.queue:
            resp.force_close()  # others wait: a kept-alive connection gives its place up after each answer
        return resp

    async def _identity(self, request: web.BaseRequest) -> str | None | web.Response:
        """The host the caller may speak for (None: anonymous agents are allowed), or the answer refusing it.
        Where client certificates would name the host, they are read here."""
        token = bearer(request)
        if token is None:
            if self.auth.allow_anonymous_agents:
                return None
            return _answer(401, "missing credentials: send 'Authorization: Bearer <agent token>' (the host's token "
                                "from [[auth.agents]])", **{"WWW-Authenticate": "Bearer"})
        host = self.auth.agent_for(token)
        if host is not None:
            return host
        if self.auth.consumer_for(token) is not None:
            return _answer(403, "this is a consumer's token: reporting events needs the agent token of the host "
                                "they are about ([[auth.agents]])")
        return _answer(401, "unknown token: use the agent token of the host the events are about",
                       **{"WWW-Authenticate": "Bearer error=\"invalid_token\""})

    async def _report(self, request: web.BaseRequest) -> web.Response:
        token_host = await self._identity(request)
        if isinstance(token_host, web.Response):
            return token_host
        gate = self.gateway.gate
        if gate.epoch() is None:
            return self._not_leader()
        if request.content_length is not None and request.content_length > self.cfg.max_body_bytes:
            return self._too_large()
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):
                body = await request.read()
        except TimeoutError:
            return _answer(408, f"the body did not arrive within {self.cfg.request_timeout_s * 1000:.0f} ms")
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _answer(400, f"the body is not UTF-8: {exc.reason} at byte {exc.start}")
        try:
            accepted = await self.gateway.take_json(token_host, text)
        except BadMessage as exc:
            return _answer(400, str(exc))
        except ForeignHost as exc:
            return _answer(403, str(exc))
        except UnknownHost as exc:
            return _answer(400, str(exc))
        except NotLeading:
            return self._not_leader()
        return web.json_response({"accepted": accepted})

    def _too_large(self) -> web.Response:
        return _answer(413, f"the body is over {self.cfg.max_body_bytes} bytes: send fewer events per request")

    def _not_leader(self) -> web.Response:
        leader = self.gateway.gate.agent_redirect()
        body: dict[str, Any] = {"error": "not the leader: report to the replica that leads" + (
            f" (its agents' endpoint is {leader})" if leader else "; none is elected yet, retry in a moment")}
        if leader:
            body["leader"] = leader
        return web.json_response(body, status=503, headers={"Retry-After": RETRY_AFTER_S})

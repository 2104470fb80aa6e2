"""AgentGateway: the agents' streams, validated, fed into liveness and the responder.

Nothing an agent sends can crash the inspector or stall other agents: every
message is checked against limits, a bad one ends only its own stream with
INVALID_ARGUMENT naming the field, and responses run as tasks so a slow
fence never holds up reading.

Only the leader takes agents. A follower answers the Hello with a Redirect
to the leader (or UNAVAILABLE while none is known; ``inspector/ha/redirects.py``
on why it may hold the stream a moment first). A stream belongs to the term it
was opened in: when that term ends, the stream's next message (a heartbeat at
the latest) is answered with a Redirect, and the agent reconnects and says
Hello to whoever leads now — that Hello is what a new term is derived from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Callable, Protocol

import grpc

from controller_adapter.base import NotFound
from doctor_common.admission import UNBOUNDED, Admission
from doctor_common.agent_limits import MAX_BATCH
from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2
from doctor_common.auth import AgentIdentity, TokenAuth
from doctor_common.grpcutil import Undecodable
from doctor_common.timeline import now_ns
from inspector.southbound.json_events import parse_json_events
from inspector.southbound.liveness import HostRecord, Liveness
from inspector.southbound.messages import BadMessage, check_health, check_hello, check_state

log = logging.getLogger("doctor.inspector.gateway")

HELLO_TIMEOUT_S = 5.0
RESTARTED = "compute.host.restarted"
MAX_JSON_BYTES = 1024 * 1024  # one JSON report, over gRPC or HTTP


class ForeignHost(Exception):
    """A JSON event names a host the caller's token may not speak for."""


class UnknownHost(Exception):
    """A JSON event names a host the controller does not know."""


class NotLeading(Exception):
    """This replica stopped leading while a JSON report was being checked: nothing of it was handed on."""


class LeaderGate(Protocol):
    def epoch(self) -> int | None:
        """The current term's number while this replica acts as leader; None otherwise."""
        ...

    def agent_redirect(self) -> str | None:
        """Where agents should connect (the leader's agent endpoint); None when no leader is known."""
        ...

    async def agent_target(self, host_id: str) -> str | None:
        """Where to send this host's agent now (a follower may hold it while the election settles)."""
        ...

    async def require_leader(self, context: grpc.aio.ServicerContext, key: str = "") -> None:
        """Abort UNAVAILABLE (with the ``doctor-leader`` hint) unless this replica acts as leader."""
        ...


class Standalone:
    """Always the leader, one term."""

    def epoch(self) -> int | None:
        return 0

    def agent_redirect(self) -> str | None:
        return None

    async def agent_target(self, host_id: str) -> str | None:
        return None

    async def require_leader(self, context: grpc.aio.ServicerContext, key: str = "") -> None:
        return None


class AgentGatewayServicer(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, auth: TokenAuth, liveness: Liveness, known_host: Callable[[str], Any],
                 on_state: Callable[[HostRecord, agent_pb2.ComponentState, int, int, int], None],
                 heartbeat_interval_ms: int, gate: LeaderGate | None = None,
                 is_switch: Callable[[str], bool] = lambda _name: False,
                 on_switch: Callable[[str, agent_pb2.ComponentState], None] = lambda _name, _state: None,
                 admission: Admission = UNBOUNDED, ended: Callable[[], None] = lambda: None) -> None:
        self.auth = auth
        self.ended = ended  # a Connect call ended (doctor_common/gc_pacing.py thaws after many)
        self.admission = admission  # Hellos reconciled at once (a reconnect storm converges, doctor_common/admission)
        self.liveness = liveness
        self.known_host = known_host  # coroutine: raises NotFound for an unknown host
        # called for every component reading (observed, sent, received ns), schedules the response; it builds a
        # Trigger only for what it responds to: most readings are a healthy component's, and need none
        self.on_state = on_state
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.gate = gate or Standalone()
        self.is_switch = is_switch    # a monitor's JSON event may be about a switch, a physical resource too
        self.on_switch = on_switch

    async def _host_for(self, claimed: str, context: grpc.aio.ServicerContext, *, switch: bool = False) -> None:
        who = await self.auth.agent_identity(context)  # token, certificate, or both agreeing (docs/tls.md)
        if who is not None and not who.allows(claimed):
            if who.via == "token":
                why = f"this agent's token belongs to host {next(iter(who.hosts))!r}, not {claimed!r}"
            else:
                why = (f"this agent's certificate names {', '.join(sorted(who.hosts))}, not {claimed!r}: "
                       "an agent speaks only for a host its certificate names as a DNS subjectAltName")
            self.auth.audit.rejected(context.peer(), "wrong_host", why)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        if switch:
            return
        try:
            await self.known_host(claimed)
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"host {claimed!r} is not in the controller's inventory: add it there first")

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):  # not wait_for (gh-86296: it can swallow a cancellation)
                first = await anext(request_iterator)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on the stream must be Hello")
        # admitted once its Hello is in: a stream that says nothing holds no place in the queue
        if not self.admission.enter():
            await self.admission.refuse(context, "agent")
        ticket = self.admission.ticket()
        try:
            epoch = self.gate.epoch()
            if isinstance(first, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.error)
            if first.WhichOneof("kind") != "hello":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the first message on the stream must be Hello, got {first.WhichOneof('kind')}")
            hello = first.hello
            try:
                check_hello(hello)
            except BadMessage as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            await self._host_for(hello.host_id, context)
            if epoch is None:  # a follower: send it to the leader (held here while that is still being decided)
                leader = await self.gate.agent_target(hello.host_id)
                epoch = self.gate.epoch()
                if epoch is None:
                    if leader:
                        yield agent_pb2.GatewayMessage(redirect=agent_pb2.Redirect(leader_endpoint=leader))
                        return
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader is elected yet: try again")
            elif self.gate.epoch() != epoch:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "leadership changed while connecting: reconnect")

            rec = self.liveness.record(hello.host_id)
            stream = object()
            rebooted = await self.liveness.attach(rec, stream, hello, context.peer())
            rec.credential = self.auth.credential(context)  # its token's digest (checked by _host_for); b"": none
            rec.revoked = False
            yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=self.heartbeat_interval_ms))
            try:
                if rebooted:
                    self._restarted(rec)
                self._reconcile(rec, hello)
                ticket.done()  # the handshake is over: the next agent may be admitted
                async for msg in request_iterator:
                    if isinstance(msg, Undecodable):
                        raise BadMessage(msg.error)
                    if self.gate.epoch() != epoch:  # the term this stream was opened in is over
                        leader = self.gate.agent_redirect()
                        if leader:
                            yield agent_pb2.GatewayMessage(redirect=agent_pb2.Redirect(leader_endpoint=leader))
                            return
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica stopped leading: reconnect")
                    if rec.stream is not stream:
                        await context.abort(grpc.StatusCode.ABORTED, "a newer stream of this host took over")
                    if rec.revoked:
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                            "this agent's token was withdrawn (the inspector's configuration was reloaded "
                                            "without it)")
                    await self.liveness.heard(rec)
                    if rec.resync:
                        rec.resync = False
                        yield agent_pb2.GatewayMessage(resync=agent_pb2.Resync())
                    kind = msg.WhichOneof("kind")
                    if kind == "events":
                        acked = self._events(rec, msg.events)
                        if acked:
                            yield agent_pb2.GatewayMessage(ack=agent_pb2.Ack(sequence=acked))
                    elif kind == "heartbeat":
                        self.liveness.heartbeat(rec, msg.heartbeat.sent_unix_nanos)
                    elif kind == "health":
                        check_health(msg.health)
                        rec.health = msg.health
                    elif kind == "goodbye":
                        rec.goodbye = True
                    elif kind == "hello":
                        raise BadMessage("Hello may be sent only once per stream")
            except BadMessage as exc:
                log.warning("agent %s sent a bad message: %s", hello.host_id, exc)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            finally:
                await self.liveness.detach(rec, stream)
        finally:
            ticket.done()
            self.ended()

    def _restarted(self, rec: HostRecord) -> None:
        """The seeds' "host restarted" fault: raised (its owners' servers went down with it) and, the host being
        back, cleared at once."""
        received = now_ns()
        fault = agent_pb2.ComponentState(
            component="host:boot", checker="inspector", status=agent_pb2.COMPONENT_STATUS_FAULT,
            fault_type=RESTARTED, severity=common_pb2.SEVERITY_MAJOR,
            description="the host rebooted: the kernel's boot id changed", details={"boot_id": rec.host_boot_id})
        back = agent_pb2.ComponentState(component="host:boot", checker="inspector",
                                        status=agent_pb2.COMPONENT_STATUS_OK, severity=common_pb2.SEVERITY_CLEARED)
        log.warning("host %s restarted (boot id %s)", rec.host_id, rec.host_boot_id)
        for state in (fault, back):
            self.on_state(rec, state, received, 0, received)

    def _reconcile(self, rec: HostRecord, hello: agent_pb2.Hello) -> None:
        """Level-triggered: treat every component in the Hello as if it had just changed to what it is."""
        received = now_ns()
        for c in hello.components:
            previous = rec.components.get(c.component)
            if previous is not None and previous.status == c.status and previous.fault_type == c.fault_type:
                continue
            rec.components[c.component] = c
            self.on_state(rec, c, c.since_unix_nanos or received, 0, received)

    def _events(self, rec: HostRecord, batch: agent_pb2.EventBatch) -> int:
        if len(batch.events) > MAX_BATCH:
            raise BadMessage(f"events: at most {MAX_BATCH} per batch")
        received = now_ns()
        for i, e in enumerate(batch.events):
            check_state(e.state, f"events[{i}].state")
        acked = 0
        for e in batch.events:
            acked = max(acked, e.sequence)
            if e.sequence <= rec.last_sequence:
                continue  # a resend of something already processed
            rec.last_sequence = e.sequence
            rec.components[e.state.component] = e.state
            self.on_state(rec, e.state, e.observed_unix_nanos, e.sent_unix_nanos, received)
            if e.state.details.get("gone") == "true":  # the component no longer exists (a VM deleted)
                del rec.components[e.state.component]
        return acked

    async def ReportJson(self, request: agent_pb2.JsonEventReport,
                         context: grpc.aio.ServicerContext) -> agent_pb2.JsonEventAck:
        """The seeds' southbound event: {"event": {...}} or {"events": [...]}."""
        who = await self.auth.agent_identity(context)
        await self.gate.require_leader(context)
        if len(request.json) > MAX_JSON_BYTES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "json: at most 1 MiB")
        try:
            accepted = await self.take_json(who, request.json)
        except BadMessage as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"json: {exc}")
        except ForeignHost as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except UnknownHost as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except NotLeading:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this replica stopped leading: report again")
        return agent_pb2.JsonEventAck(accepted=accepted)

    async def take_json(self, who: AgentIdentity | str | None, text: str) -> int:
        """A monitor's JSON report, whatever carried it (``ReportJson``, ``southbound/http_events.py``): checked
        whole, then every event handed on as an agent's state. ``who`` is the caller: the hosts its certificate or
        token stands for, or a token's host (None: an anonymous agent, when allowed). Raises ``BadMessage``, ``ForeignHost`` or
        ``UnknownHost`` naming the first bad event, or ``NotLeading``; then nothing of the report was handed on."""
        events = parse_json_events(text)
        checked: set[str] = set()
        for i, (host, _, _) in enumerate(events):
            if host in checked:
                continue
            if isinstance(who, str):
                who = AgentIdentity(frozenset({who}), "token")
            if who is not None and not who.allows(host):
                held = (f"token belongs to host {next(iter(who.hosts))!r}" if who.via == "token" else
                        f"certificate names {', '.join(sorted(who.hosts))}")
                raise ForeignHost(f"events[{i}].details.hostname: this agent's {held}, not {host!r}")
            if not self.is_switch(host):
                try:
                    await self.known_host(host)
                except NotFound:
                    raise UnknownHost(f"events[{i}].details.hostname: host {host!r} is not in the controller's "
                                      "inventory: add it there first") from None
            checked.add(host)
        if self.gate.epoch() is None:  # lost while the hosts were looked up: the leader must hear it instead
            raise NotLeading()
        received = now_ns()
        for host, state, observed in events:
            if self.is_switch(host):
                self.on_switch(host, state)
                continue
            rec = self.liveness.record(host)
            rec.components[state.component] = state
            self.on_state(rec, state, observed, 0, received)
        return len(events)

"""Finding the replica that serves a call: several endpoints, the leader's hint, one deadline.

``Endpoints`` holds a client's inspector addresses, one channel each, and the
one that served last. ``Endpoints.call`` makes one attempt at a time until a
replica serves the call:

- a follower refuses the leader's calls with UNAVAILABLE and the
  ``doctor-leader`` trailer (``Inspector.require_leader``): the next attempt
  goes where it points; while it names nobody (no leader elected yet) the
  next endpoint, while it names itself (it is taking over) the same one,
  after a short pause;
- an endpoint that cannot be connected to (refused, no such socket, unknown
  name, or still connecting after ``connect_timeout_s``: a hung process), or
  that answers UNAVAILABLE ("try again"): the next endpoint;
- any other answer is the answer: a result, or the error as the server sent it.

It gives up with ``Unreachable`` (an ``AioRpcError``, UNAVAILABLE, naming
every endpoint tried and why) when the deadline passes — or at once when not
one endpoint could be connected to: nobody is there, and waiting would not
help, whereas while a replica answers an election may be under way.

Retrying is safe for every call: a follower's refusal and a connection that
never opened did nothing, and a replica answers UNAVAILABLE only when nothing
was changed. A call whose connection broke while the server worked on it may
have taken effect: its retry is then refused (a maintenance session that
already started says so), it is not done twice.

With ``at_leader`` the call is one every replica answers with its own view
(``Diagnostics``): the endpoint is first asked whether it leads (its health
for ``doctor.v1.Hosts``, SERVING only where the leader's calls are served),
and a follower's status names the leader to go to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from doctor_common.api import diagnostics_pb2, diagnostics_pb2_grpc
from doctor_common.grpcutil import channel_options
from doctor_common.grpc_tls import secure_channel
from doctor_common.tls import ClientTls

log = logging.getLogger("doctor.client")

T = TypeVar("T")
Metadata = Sequence[tuple[str, str]]

LEADER_KEY = "doctor-leader"
LEADER_SERVICE = "doctor.v1.Hosts"  # in inspector/core.py LEADER_ONLY: NOT_SERVING unless this replica acts
_CONNECTING = (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING)
RETIRE_S = 15.0  # a dropped channel is closed this long after: past any call's first message on it
_NEVER_SENT = ("failed to connect", "errors resolving", "dns resolution failed")


def pause_s(backoff_s: float, exc: BaseException | None = None) -> float:
    """How long to wait before trying again: ``backoff_s`` jittered (half of it, plus up to the other half at
    random, so clients turned away together do not come back together), and never less than a busy server's
    ``retry-after-ms`` trailer (``doctor_common/admission.py``)."""
    after = 0.0
    if isinstance(exc, grpc.aio.AioRpcError):
        for key, value in exc.trailing_metadata() or ():
            if key == "retry-after-ms":
                try:
                    after = max(0.0, min(float(value) / 1000, 60.0))
                except ValueError:
                    pass
    return max(backoff_s / 2 + random.uniform(0, backoff_s / 2), after * random.uniform(1.0, 1.5))


def leader_trailer(exc: grpc.aio.AioRpcError) -> str | None:
    """A follower's ``doctor-leader`` trailer: None when absent (no follower refused), "" while none leads."""
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_KEY:
            return str(value)
    return None


def leader_hint(exc: grpc.aio.AioRpcError) -> str | None:
    """The leader a follower names, if it names one."""
    return leader_trailer(exc) or None


def never_connected(exc: grpc.aio.AioRpcError) -> str | None:
    """Why a call never reached a server (``connection refused``, ``no such file or directory``...); None if it
    did. gRPC says so in its own words: "failed to connect to all addresses; last error: ...: Connection refused"."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_NEVER_SENT):
        return details.rsplit(": ", 1)[-1].strip(" []").lower()
    return None


def one_line(text: str) -> str:
    return " ".join(text.split())


class Unreachable(grpc.aio.AioRpcError):
    """No endpoint served the call; ``tried``: each endpoint tried (in that order) and what it last did."""

    def __init__(self, what: str, tried: dict[str, str]) -> None:
        self.tried = dict(tried)
        listing = "; ".join(f"{ep}: {why}" for ep, why in tried.items())
        super().__init__(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                         f"{what} (tried {listing})")


async def _connects(channel: grpc.aio.Channel, timeout: float) -> bool:
    """False while the channel is still connecting after ``timeout`` (a hung process, a black hole); True once it
    is connected or has failed (a call then fails at once, saying why)."""
    state = channel.get_state(try_to_connect=True)
    try:
        async with asyncio.timeout(timeout):
            while state in _CONNECTING:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
    except TimeoutError:
        return False
    return True


class Endpoints:
    """A client's inspector endpoints, a channel to each, and the one that served last (tried first)."""

    def __init__(self, endpoints: Sequence[str], connect_timeout_s: float = 2.0, tls: ClientTls | None = None,
                 spread: bool = False) -> None:
        self.configured = list(dict.fromkeys(endpoints))
        if not self.configured or not all(self.configured):
            raise ValueError(f"give at least one inspector endpoint (got {list(endpoints)!r})")
        self.current = self.configured[0]
        # where this client's first stream is opened: any replica serves Subscribe, so with ``spread`` consumers
        # given every replica spread over them instead of all starting at the first one listed
        self.streams_from = random.choice(self.configured) if spread else None  # None: where calls go
        self.connect_timeout_s = connect_timeout_s
        self.tls = tls  # None: plaintext (docs/tls.md)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # dropped channels, closed a little later (``_forget``)

    def channel(self, endpoint: str | None = None) -> grpc.aio.Channel:
        ep = endpoint or self.current
        ch = self._channels.get(ep)
        if ch is None:
            ch = self._channels[ep] = secure_channel(ep, self.tls, channel_options())
        return ch

    def _forget(self, endpoint: str, channel: grpc.aio.Channel) -> None:
        """Drop a channel that could not connect: a new one dials at once, the old one would wait out its
        reconnect backoff. Only if it is still the one in use (another call may have replaced it already), and
        closed ``RETIRE_S`` later: other calls of this client may be on it (a stream opening beside a retried
        unary call); closed under them, a stream waited out its whole deadline for a first message."""
        if self._channels.get(endpoint) is not channel:
            return
        del self._channels[endpoint]

        async def retire() -> None:
            try:
                await asyncio.sleep(RETIRE_S)
            finally:  # then, or at once when the client closes
                await channel.close()
        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    def after(self, endpoint: str) -> str:
        """The configured endpoint after ``endpoint`` (the first, after one a follower sent us to)."""
        if endpoint not in self.configured:
            return self.configured[0]
        return self.configured[(self.configured.index(endpoint) + 1) % len(self.configured)]

    def moved(self, exc: grpc.aio.AioRpcError) -> None:
        """An established stream broke with ``exc``: where to reconnect first."""
        hint = leader_trailer(exc)
        if hint and hint != self.current:
            self.current = hint
        elif hint != self.current:  # no hint, or no leader known: the next replica; naming itself: stay
            self.current = self.after(self.current)

    async def call(self, attempt: Callable[[grpc.aio.Channel, float], Awaitable[T]], deadline_s: float, *,
                   follow: bool = True, at_leader: bool = False, metadata: Metadata = (),
                   max_backoff_s: float = 1.0, start: str | None = None) -> T:
        """``attempt(channel, seconds left)`` at one replica after another until one serves it (see the module),
        from ``start`` (default: the one that served last)."""
        if not follow:
            return await attempt(self.channel(start), deadline_s)
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        tried: dict[str, str] = {}
        unreachable: set[str] = set()
        answered = False  # some replica answered: an election may be settling, worth waiting for
        backoff = 0.05
        target = start or self.current
        refused: BaseException | None = None
        while True:
            left = end - loop.time()
            if left <= 0:
                raise Unreachable(f"no inspector served the call within {deadline_s:g} s", tried)
            connect_s = min(self.connect_timeout_s, left)
            channel = self.channel(target)
            if not await _connects(channel, connect_s):
                tried[target], never = f"no connection within {connect_s:.1f} s", True
                hint = None
            else:
                try:
                    if at_leader:
                        await self._leads(target, end - loop.time(), metadata)
                    result = await attempt(channel, max(end - loop.time(), 0.001))
                    self.current = target
                    return result
                except grpc.aio.AioRpcError as exc:
                    hint, why = leader_trailer(exc), never_connected(exc)
                    if hint is None and why is None and exc.code() not in (
                            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise  # the answer
                    never = why is not None
                    tried[target] = why or _refusal(exc, hint, target)
                    refused = exc
            if never:
                unreachable.add(target)
                self._forget(target, channel)
                if not answered and unreachable >= set(self.configured):
                    raise Unreachable("no inspector could be reached", tried)
            else:
                answered = True
            log.debug("%s did not serve the call: %s", target, tried[target])
            if hint and hint != target:
                target = hint
            elif hint is None or hint == "":
                target = self.after(target)
            # else: it names itself, it is taking over: ask it again
            if target in tried:  # been there in this call: pace the rounds while the election settles
                await asyncio.sleep(min(pause_s(backoff, refused), max(end - loop.time(), 0)))
                backoff = min(backoff * 2, max_backoff_s)

    async def _leads(self, target: str, left: float, metadata: Metadata) -> None:
        """Return when ``target`` serves the leader's calls; else raise a follower's refusal naming the leader."""
        channel = self.channel(target)
        try:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=LEADER_SERVICE), timeout=left)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                return  # no such health entry: an inspector that does not replicate
            raise
        if health.status == health_pb2.HealthCheckResponse.SERVING:
            return
        report = await diagnostics_pb2_grpc.DiagnosticsStub(channel).GetStatus(
            diagnostics_pb2.GetStatusRequest(), metadata=metadata, timeout=left)
        leader = target if report.role == "leader" else report.leader_endpoint
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                   grpc.aio.Metadata((LEADER_KEY, leader)), f"{report.role}, not serving")


def _refusal(exc: grpc.aio.AioRpcError, hint: str | None, target: str) -> str:
    if hint == target:
        return "a follower taking over"
    if hint:
        return f"a follower, sent to the leader at {hint}"
    if hint == "":
        return "a follower, no leader elected yet"
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    return f"{exc.code().name}: {one_line(exc.details() or '')}"

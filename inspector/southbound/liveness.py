"""Host liveness from the agents' streams (DESIGN principle 4: agent death is not host death).

    unknown ──Hello──▶ up ──stream closed, the peer's kernel answered──▶ agent_down   (an agent alarm, no fence)
                        │ ──Goodbye, then closed─────────────────────────▶ stopped      (orderly stop)
                        │ ──stream closed unanswered (transport silence)─▶ unreachable  (confirm with the BMC, fence)
                        └──no message for longer than the silence limit─▶ unreachable
    any ──Hello or any message──▶ up

Two detectors of silence. The transport: the server's HTTP/2 keepalive
(pings answered in gRPC's core, no Python per ping) ends the stream of a peer
that answers nothing, and the kernel's TCP state of the closed connection
tells that apart from an agent that died on a live host
(``southbound/tcp_peer.py``). And the application: no message of any kind
(events, heartbeats) for longer than the silence limit — the liveness
timeout, or 2.5 heartbeat intervals when heartbeats are rarer than that (a
large fleet's setting: the transport then carries silence detection, and no
healthy agent is declared between two heartbeats); over TCP, only when the
connection does not show its peer's kernel answering (a live host's agent
stalled, or this inspector behind reading it, is not silence:
``tcp_peer.judge_open``). Silence is counted less
the time the inspector itself was not running (``southbound/lag.py``);
nothing is declared unreachable while the inspector is behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from doctor_common.api import agent_pb2
from doctor_common.timeline import now_ns
from inspector.southbound.lag import Lag
from inspector.southbound.tcp_peer import AFRESH_MAX_S

log = logging.getLogger("doctor.inspector.liveness")

UP, AGENT_DOWN, UNREACHABLE, STOPPED, UNKNOWN = "up", "agent_down", "unreachable", "stopped", "unknown"
AFRESH_WAIT_S = 0.05  # how often a close left undecided by a stall asks whether this inspector is on time again


@dataclass
class HostRecord:
    host_id: str
    liveness: str = UNKNOWN
    connected: bool = False
    boot_id: str = ""
    agent_version: str = ""
    facts: dict[str, str] = field(default_factory=dict)  # what the host runs, as its agent last said (Hello)
    peer: str = ""
    last_seen: float = 0.0          # monotonic, for timeouts
    last_seen_ns: int = 0           # wall clock, for humans
    lost_at_seen: float = 0.0       # the inspector's lost time (Lag.lost_s) when last heard
    min_read_delay: float = float("inf")  # the stream's smallest heartbeat delay (clock offset + network)
    changed_at: float = 0.0         # monotonic: when its liveness last changed
    host_boot_id: str = ""          # the kernel's boot id, as its agent last reported it
    resync: bool = False            # ask its agent for every level again (with the next message it sends)
    credential: bytes = b""         # the digest of the host token its stream was opened with (b"": anonymous)
    revoked: bool = False           # that token was withdrawn by a reload: the stream is ended
    last_sequence: int = 0          # highest event sequence processed for boot_id
    components: dict[str, agent_pb2.ComponentState] = field(default_factory=dict)
    health: agent_pb2.AgentHealth | None = None  # the agent's latest report on itself, for Diagnostics
    stream: object | None = None    # identity of the stream currently owning the host
    excused: bool = False           # silent past the limit, its kernel answering: said once per silence
    goodbye: bool = False
    closed_stream: object | None = None  # the stream whose end is being judged (a later one's judgement wins)

    def seen(self) -> None:
        self.last_seen = time.monotonic()
        self.last_seen_ns = now_ns()


class Liveness:
    """Tracks every host's agent; calls ``on_change(record, old, new)`` on every liveness transition."""

    def __init__(self, timeout_s: float, on_change: Callable[[HostRecord, str, str], Awaitable[None]],
                 lag: Lag | None = None, *, heartbeat_s: float = 0.0,
                 peer_silent: Callable[[str], Awaitable[bool]] | None = None,
                 open_peer_silent: Callable[[str], Awaitable[bool | None]] | None = None,
                 peer_silent_afresh: Callable[[str, Callable[[], bool], float, Callable[[], bool]],
                                              Awaitable[bool | None]] | None = None,
                 transport_s: float = 0.0) -> None:
        self.timeout_s = timeout_s
        # no message for longer than this: unreachable (a healthy agent speaks every heartbeat interval)
        self.silence_limit_s = max(timeout_s, 2.5 * heartbeat_s)
        self.peer_silent = peer_silent  # did a closed connection's peer answer? (southbound/tcp_peer.py)
        self.open_peer_silent = open_peer_silent  # and an open one's, when its agent fell silent
        self.peer_silent_afresh = peer_silent_afresh  # and a closed one's again, once this inspector is on time
        # a kernel that acknowledged all we sent is proof of life only once the keepalive has had its full turn
        # (a ping sent and left unanswered for its timeout ends the connection): until then, nothing is declared
        self.stall_after_s = self.silence_limit_s + transport_s
        self._judging: set[asyncio.Task[None]] = set()
        self.on_change = on_change
        self.lag = lag or Lag(bound_s=max(0.05, timeout_s / 5), hold_s=timeout_s)
        self.hosts: dict[str, HostRecord] = {}
        self.closing = False  # this inspector is stopping: the streams end because it ends them

    def reset(self) -> None:
        """Forget every host (a new term re-derives them from the agents' Hello; older streams are orphaned)."""
        for task in self._judging:
            task.cancel()
        self.hosts = {}
        self.lag.clear_read_delays()

    def expect(self, host_id: str, grace_s: float) -> HostRecord:
        """A host whose agent was connected to the previous leader: counted UP, silent for now, and declared
        unreachable if its agent has not come back within ``grace_s`` plus the timeout (so a host that
        died during a failover is still noticed)."""
        rec = self.record(host_id)
        rec.liveness = UP
        self._seen(rec)
        rec.last_seen += grace_s
        return rec

    def _seen(self, rec: HostRecord) -> None:
        rec.seen()
        rec.lost_at_seen = self.lag.lost_s

    def silence(self, rec: HostRecord, now: float | None = None) -> float:
        """Seconds since the host was last heard, less the time this process was not running meanwhile."""
        now = time.monotonic() if now is None else now
        return now - rec.last_seen - (self.lag.lost_s - rec.lost_at_seen)

    def current(self, rec: HostRecord) -> bool:
        return self.hosts.get(rec.host_id) is rec

    def record(self, host_id: str) -> HostRecord:
        rec = self.hosts.get(host_id)
        if rec is None:
            rec = self.hosts[host_id] = HostRecord(host_id)
        return rec

    async def _set(self, rec: HostRecord, new: str) -> None:
        old = rec.liveness
        if old != new:
            rec.liveness = new
            rec.changed_at = time.monotonic()
            log.info("host %s: %s -> %s", rec.host_id, old, new)
            await self.on_change(rec, old, new)

    async def attach(self, rec: HostRecord, stream: object, hello: agent_pb2.Hello, peer: str) -> bool:
        """A new stream of the host's agent. True when the host itself rebooted since its agent last spoke (the
        kernel's boot id changed), not just its agent."""
        rebooted = bool(rec.host_boot_id and hello.host_boot_id and rec.host_boot_id != hello.host_boot_id)
        rec.host_boot_id = hello.host_boot_id or rec.host_boot_id
        if rec.boot_id != hello.boot_id:
            rec.last_sequence = 0  # a new agent boot numbers its events from 1 again
            rec.health = None      # and counts its checkers' runs afresh
        rec.stream, rec.connected, rec.goodbye = stream, True, False
        rec.min_read_delay = float("inf")
        rec.excused = False
        rec.boot_id, rec.agent_version, rec.peer = hello.boot_id, hello.agent_version, peer
        rec.facts = dict(hello.facts)
        self._seen(rec)
        await self._set(rec, UP)
        return rebooted

    async def heard(self, rec: HostRecord) -> None:
        self._seen(rec)
        rec.excused = False
        if rec.liveness != UP:
            await self._set(rec, UP)

    def heartbeat(self, rec: HostRecord, sent_ns: int) -> None:
        """A heartbeat read now: how late, beyond the stream's best, tells whether this inspector keeps up."""
        if sent_ns <= 0:
            return
        delay = (now_ns() - sent_ns) / 1e9
        rec.min_read_delay = min(rec.min_read_delay, delay)
        self.lag.observe_read_delay(rec.host_id, delay - rec.min_read_delay)

    async def detach(self, rec: HostRecord, stream: object) -> None:
        """The stream ended: an orderly stop, the agent's death (the peer's kernel closed the connection or
        answered ours), or the peer's silence (the keepalive gave up on a connection nobody answers)."""
        if rec.stream is not stream or not self.current(rec):
            return  # replaced by a newer stream of the same host, or a record of an earlier term
        rec.stream, rec.connected = None, False
        if self.closing:
            return  # not the agent's doing: it reconnects to the next inspector, which judges it afresh
        if rec.goodbye:
            await self._set(rec, STOPPED)
        elif rec.liveness == UP:
            if self.peer_silent is not None and rec.peer.startswith(("ipv4:", "ipv6:")):
                # judged in a task of its own: the handler that called this is being torn down
                rec.closed_stream = stream
                task = asyncio.create_task(self._judge_close(rec, stream), name=f"closed stream of {rec.host_id}")
                self._judging.add(task)
                task.add_done_callback(self._judging.discard)
            elif self.silence(rec) < self.silence_limit_s:
                await self._set(rec, AGENT_DOWN)

    async def _judge_close(self, rec: HostRecord, stream: object) -> None:
        assert self.peer_silent is not None
        closed_at = time.monotonic()
        try:
            silent = await self.peer_silent(rec.peer)
            if (rec.connected or not self.current(rec) or rec.liveness != UP or self.closing
                    or rec.closed_stream is not stream):
                return  # back already (a newer stream, perhaps closed since: its own judgement counts), or judged
            if silent and not self._on_time():  # a stall nobody has measured yet is measured before it is trusted
                # the kernel's evidence may be our own stall's (ACKs read late, our segments retransmitted): not
                # trusted as it stands. Looked at again once this inspector is on time; without fresh evidence, a
                # host really gone is still found by the silence limit, which discounts the stall
                log.warning("host %s: its connection ended unanswered while this inspector is behind: judged again "
                            "once it is on time", rec.host_id)
                silent = await self._afresh(rec, closed_at)
                if (rec.connected or not self.current(rec) or rec.liveness != UP or self.closing
                        or rec.closed_stream is not stream):
                    return
                if silent is None:
                    log.warning("host %s: nothing new on its closed connection: left to the silence limit",
                                rec.host_id)
                    return
            if silent:
                await self._set(rec, UNREACHABLE)
            else:
                # answered: the host's kernel spoke, so its agent died — however long it was silent before
                await self._set(rec, AGENT_DOWN)
        except Exception:  # noqa: BLE001 - one host's judgement must not be lost silently
            log.exception("judging the closed stream of host %s failed", rec.host_id)
        finally:
            if rec.closed_stream is stream:
                rec.closed_stream = None

    def _on_time(self) -> bool:
        self.lag.check()
        return not self.lag.behind()

    async def _afresh(self, rec: HostRecord, closed_at: float) -> bool | None:
        """The closed connection of ``rec``, judged again with this inspector on time: True silent, False answered,
        None no fresh evidence before the silence limit would judge the host anyway, or before the kernel may
        destroy the socket (``tcp_peer.AFRESH_MAX_S`` after the close; a socket gone would read as answered)."""
        if self.peer_silent_afresh is None:
            return None
        deadline = min(time.monotonic() + max(0.0, self.silence_limit_s - self.silence(rec)),
                       closed_at + AFRESH_MAX_S)

        def gone() -> bool:  # back, or judged otherwise, or this inspector stopping: nothing to decide here
            return rec.connected or self.closing or not self.current(rec) or rec.liveness != UP
        while not self._on_time():  # bounded by the deadline
            if time.monotonic() >= deadline or gone():
                return None
            await asyncio.sleep(AFRESH_WAIT_S)
        return await self.peer_silent_afresh(rec.peer, self._on_time, deadline - time.monotonic(), gone)

    async def watch(self) -> None:
        """Declare silent hosts unreachable; runs until cancelled.

        Time this process did not run (a freeze, a stall, overload) is not counted as the hosts' silence: their
        messages of that time are still unread in the sockets. While the inspector is behind, nothing is
        declared at all.
        """
        period = max(self.timeout_s / 5, 0.01)
        while True:
            await asyncio.sleep(period)
            self.lag.check()  # a stall this loop is first to notice is credited before judging
            now = time.monotonic()
            if self.lag.behind(now):
                continue
            silent = [rec for rec in list(self.hosts.values()) if rec.liveness == UP and rec.closed_stream is None
                      and self.silence(rec, now) > self.silence_limit_s]  # a close being judged: its verdict decides
            if silent:
                await self._declare(silent)

    async def _declare(self, silent: list[HostRecord]) -> None:
        """Declare unreachable the silent hosts whose transport does not say otherwise: a stream still open over
        TCP whose peer's kernel answers is left to the keepalive for its full turn, then is a live host
        (``tcp_peer.judge_open``) whose agent is down, and so is one still undecided a silence limit after that;
        one whose kernel is silent too, or that nothing can tell about (not TCP, not open), is unreachable."""
        told: dict[int, bool | None] = {}  # what the open connections' kernels say, by index in ``silent``
        asked = [i for i, rec in enumerate(silent) if self.open_peer_silent is not None and rec.connected
                 and rec.peer.startswith(("ipv4:", "ipv6:"))]
        if asked:
            assert self.open_peer_silent is not None
            answers = await asyncio.gather(*(self.open_peer_silent(silent[i].peer) for i in asked),
                                           return_exceptions=True)
            told = {i: a for i, a in zip(asked, answers) if not isinstance(a, BaseException)}
            self.lag.check()
            if self.lag.behind():
                return  # the look took long enough to doubt what it saw: judged at the next turn
        now = time.monotonic()
        for i, rec in enumerate(silent):
            if (not self.current(rec) or rec.liveness != UP or rec.closed_stream is not None
                    or self.silence(rec, now) <= self.silence_limit_s):
                continue  # heard meanwhile, or judged
            verdict = told.get(i, True)  # nothing to tell by (not TCP, not open): the silence alone decides
            if verdict is None:
                if self.silence(rec, now) < self.stall_after_s + self.silence_limit_s:
                    continue  # undecided (a close in flight, no socket found): looked at again, for a while
                # still no evidence of the peer's silence (its socket gone while this inspector has not read its
                # stream's end, seen in a 10,000-agent connect storm; probes still answered): an agent alarm, its
                # BMC polled like any absent agent's — a powered-off host is still found — never a fence
                log.warning("host %s: no message for %.1f s and its connection cannot be judged: agent down, not "
                            "unreachable", rec.host_id, self.silence(rec, now))
                await self._set(rec, AGENT_DOWN)
                continue
            if verdict is False:
                if self.silence(rec, now) < self.stall_after_s:
                    # nothing of ours unanswered yet: the keepalive's ping may not have gone out. Its full turn
                    # ends a dead host's connection (then judged as a close); until then, nothing is declared
                    if not rec.excused:
                        rec.excused = True
                        log.info("host %s: no message for %.1f s, its kernel acknowledging all we sent: left to "
                                 "the keepalive", rec.host_id, self.silence(rec, now))
                    continue
                # the connection outlived a full keepalive turn: the host's HTTP/2 answers, its agent is stalled
                # (or this inspector is behind reading it). An agent alarm (no fence; its BMC is polled like any
                # absent agent's), cleared when the agent speaks again
                log.warning("host %s: no message for %.1f s, but its connection answers the keepalive: agent "
                            "down, not unreachable (its agent stalled, or this inspector is behind reading it)",
                            rec.host_id, self.silence(rec, now))
                await self._set(rec, AGENT_DOWN)
                continue
            try:
                await self._set(rec, UNREACHABLE)
            except Exception:  # noqa: BLE001 - one host's failure must not stop the watch
                log.exception("handling silence of host %s failed", rec.host_id)

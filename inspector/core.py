"""The inspector: wires liveness, policy, resources, fencing, alarms and the notifier, and serves gRPC.

Two modes. Standalone (no ``[etcd]`` table): one process, always acting,
state in memory — not highly available, and it says so at start. Replicated:
every replica serves gRPC and campaigns in etcd; the elected one acts
(``lead``: watches liveness, responds, takes agents, decides and writes),
the others (``follow``) redirect agents and send administrators' calls to
the leader with UNAVAILABLE and the ``doctor-leader`` trailer. Every replica
serves consumers (Subscribe, QueryFaults, GetServerHostStatus): a follower
from the log and alarms the leader writes, followed in etcd
(``inspector/ha/replica_feed.py``), so a site adds notification capacity by
adding replicas, and a consumer's stream outlives a change of leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from controller_adapter.embedded_etcd import EtcdEmbeddedController
from doctor_common.api import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    fault_pb2,
    maintenance_pb2_grpc,
)
from doctor_common.admission import Admission
from doctor_common.audit import Audit
from doctor_common.config import ConfigError
from doctor_common.etcd_guard import NotLeader
from doctor_common.gc_pacing import PACING
from doctor_common.grpcutil import (DecodeErrorInterceptor, add_health_and_reflection, quiet_stop_cancellations,
                                     server_options)
from doctor_common.heap_trim import HeapTrim
from doctor_common.timeline import Stage, now_ns
from inspector.config import InspectorConfig, load_inspector_config
from inspector.ha.leadership import Leadership
from inspector.ha.redirects import LeaderProbe, Redirector
from inspector.ha.replica_feed import Followed, ReplicaFeed
from inspector.ha.term import Term
from inspector.maintenance.servicer import MaintenanceServicer
from inspector.metrics import InspectorMetrics
from inspector.maintenance.workflow import Workflow
from inspector.operator.diagnostics import DiagnosticsServicer, HostsServicer
from inspector.operator.faultview import FaultView
from inspector.response import crashpoint
from inspector.response.alarms import AlarmStore, alarm_from_json
from inspector.response.correlate import ResourceMap
from inspector.response.durable import EtcdDurable, LocalDurable, NullDurable
from inspector.response.fencing import IpmiFencer
from inspector.response.fleet_guard import FleetGuard, HostView, view_of
from inspector.response.responder import Responder
from inspector.response.trigger import Trigger
from inspector.southbound.absent import AbsentWatch
from inspector.southbound.gateway import AgentGatewayServicer
from inspector.southbound.http_events import HttpEvents
from inspector.southbound.lag import Lag
from inspector.southbound.liveness import AGENT_DOWN, STOPPED, UNREACHABLE, UP, HostRecord, Liveness
from inspector.southbound.messages import FAULTY, trigger_from_state
from inspector.southbound import tcp_peer
from inspector.southbound.tcp_peer import PeerSilence
from inspector.tls import ServerCertificates, server_listeners
from notifier.credentials import watch_keystone_streams
from notifier.log import MemoryLog, NotificationLog
from notifier.registry import REVOKED, UNSERVED, Registry
from notifier.server import FaultManagementServicer, Publisher, add_fault_management
from notifier.sqlite_log import SqliteLog, SqliteRecords, SqliteState, SqliteStore
from notifier.subscriptions import SubscriptionBook

log = logging.getLogger("doctor.inspector")

SERVICES = ("doctor.v1.AgentGateway", "doctor.v1.FaultManagement", "doctor.v1.Diagnostics", "doctor.v1.Hosts",
            "doctor.v1.Maintenance")
LEADER_ONLY = ("doctor.v1.AgentGateway", "doctor.v1.Hosts", "doctor.v1.Maintenance")  # NOT_SERVING on followers
CONSUMERS = "doctor.v1.FaultManagement"  # SERVING on a follower while it follows the log


class Inspector:
    """One inspector replica: standalone (always acting) or one of several campaigning in etcd."""

    def __init__(self, cfg: InspectorConfig, notification_log: NotificationLog | None = None) -> None:
        self.cfg = cfg
        self.auth = cfg.auth
        self.auth.require_agent_cert = cfg.tls.agents_need_cert  # [tls]: agents identified by their certificate
        self.controller = cfg.controller
        self.leadership = Leadership(
            cfg.etcd, node_id=cfg.node_id, advertise=cfg.advertise, advertise_agents=cfg.advertise_agents,
            retention=cfg.retention, subscription_expiry_s=cfg.subscription_expiry_s) if cfg.etcd is not None else None
        if self.leadership and isinstance(self.controller, EtcdEmbeddedController):
            e = cfg.etcd
            assert e is not None
            self.controller.bind(self.leadership.client, e.prefix, self.leadership.election,
                                 call_timeout_s=e.call_timeout_s, write_deadline_s=e.write_deadline_s)
        self.role = "follower" if self.leadership else "standalone"
        self.acting = self.leadership is None  # only the acting leader watches, responds and takes streams
        self.term: Term | None = None
        self._epoch = 0
        self.started_ns = now_ns()
        self.resources = ResourceMap(self.controller, cfg.resource_refresh_s)
        self.alarms = AlarmStore()
        self._faults_responded: set[tuple[str, str]] = set()  # (host, component) faulty since its last clear
        self.registry = Registry(cfg.queue_limit)
        # standalone: the log, the subscriptions, the alarms and the journal in a local SQLite file, so a restart
        # loses nothing and carries on like a new leader does
        self.local = SqliteStore(cfg.notifier_state) if not self.leadership and cfg.notifier_state else None
        self.durable: Any = (EtcdDurable(self.leadership.store) if self.leadership else
                             LocalDurable(SqliteState(self.local), cfg.node_id) if self.local else NullDurable())
        if self.leadership:
            self.log: Any = self.leadership.log
            self.book = self.leadership.book
        else:
            self.log = notification_log or (SqliteLog(self.local, cfg.retention) if self.local
                                            else MemoryLog(cfg.retention))
            self.book = SubscriptionBook(SqliteRecords(self.local) if self.local else None, cfg.subscription_expiry_s)
        # the test hook's "after_publish": the incident's final notice, appended, not yet fanned out
        self.publisher = Publisher(self.log, self.registry, after_append=lambda _seq, stage: crashpoint.reached(
            "after_publish") if stage == Stage.STAGE_PUBLISHED else None)
        self.feed: ReplicaFeed | None = None
        if self.leadership is not None:
            self.book.local_only = True  # until it leads
            store = self.leadership.store
            self.feed = ReplicaFeed(
                self.leadership.log, [Followed(store.key("alarms", ""), self._follow_alarms, self._follow_alarm),
                                      Followed(store.key("subscriptions", ""), self.book.follow_all, self.book.follow)],
                deliver=self._relay, position=lambda: self.registry.last_sequence,
                skip_to=self.registry.skip_to, idle=lambda: not len(self.registry),
                on_fresh=self._feed_fresh, stale_s=self.leadership.config.lease_ttl_s + 1.0)
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._gc_paced = False
        self.heap_trim = HeapTrim()  # what departed subscribers freed goes back to the system
        self.fencer = IpmiFencer(cfg.fencing_timeout_s, cfg.fencing_poll_s, retry_s=cfg.fencing_retry_s)
        self.lag = Lag(bound_s=cfg.max_lag_s, hold_s=cfg.liveness_timeout_s)
        self.peers = PeerSilence(lambda: set(self.ports))
        self.liveness = Liveness(cfg.liveness_timeout_s, self._liveness_changed, self.lag,
                                 heartbeat_s=cfg.heartbeat_interval_ms / 1000, peer_silent=self.peers.silent,
                                 open_peer_silent=self.peers.open_silent,
                                 peer_silent_afresh=self.peers.silent_afresh,
                                 transport_s=(cfg.keepalive_ms + cfg.ping_timeout_ms) / 1000 + 0.5)
        # a healthy agent speaks every heartbeat interval: hosts silenced together are all "quiet" by the time
        # the first of them crosses the liveness timeout
        hb = cfg.heartbeat_interval_ms / 1000
        self.quiet_after_s = max(1.5 * hb, cfg.liveness_timeout_s - hb)
        self.guard = FleetGuard(cfg.guard, lambda: self.resources.hosts, self._host_view, behind=self.lag.behind,
                                may_be_quiet=self._any_quiet)
        self.responder = Responder(cfg.policy, self.resources, self.controller, self.fencer, self.alarms,
                                   self.publisher, cfg.bmcs, self.durable, guard=self.guard, retry=cfg.fence_retry,
                                   rejoin_s=cfg.takeover_grace_s + cfg.liveness_timeout_s, spawn=self._act)
        self.view = FaultView(self.resources, self.alarms, self.responder, self.controller)
        self.maintenance = Workflow(self.controller, self.resources, self.publisher.publish, self.durable,
                                    cfg.maintenance, self._act, self.responder.host_state,
                                    blockers=self.enable_blockers, resync=self.resync, facts=self._facts,
                                    incident_on=lambda host: self.alarms.incident(host) is not None)
        self.responder.in_maintenance = self.maintenance.in_maintenance
        self.absent = AbsentWatch(self.liveness, self.responder.bmc_for, self.fencer.power_state,
                                  lambda t: self._act(self.responder.fault(t), f"{t.fault_type} on {t.host}"),
                                  cfg.absent_poll_s, cfg.agent_return_deadline_s)
        hold_s = cfg.etcd.lease_ttl_s + 1.5 if cfg.etcd else 0.0  # a dead leader is named at most this long
        self.probe = LeaderProbe(self.leader_endpoint, tls=cfg.tls.peer_tls())
        self.agent_redirects = Redirector(self._leader_agent_endpoint, lambda: self.acting, cfg.advertise_agents,
                                          hold_s, self.probe.alive)
        self.consumer_redirects = Redirector(self.leader_endpoint, lambda: self.acting, cfg.advertise, hold_s,
                                             self.probe.alive)
        # a reconnect storm converges: handshakes beyond these are turned away at once, to retry with backoff
        self.agent_admission = Admission(cfg.max_handshakes)
        self.subscription_admission = Admission(cfg.max_handshakes)
        # one audit trail for every decision of this replica (doctor.audit); its metrics listen to it
        self.audit = Audit()
        self.auth.audit = self.responder.audit = self.publisher.audit = self.audit
        self.metrics = InspectorMetrics(self) if cfg.metrics_listen else None
        if self.metrics is not None:
            self.audit.listeners.append(self.metrics.on_audit)
        self.server: grpc.aio.Server | None = None
        self.http_events: HttpEvents | None = None  # [http_events]: the monitors' JSON over HTTP
        self.health: Any = None
        self.ports: list[int] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keystone_watch: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._reloading = asyncio.Lock()
        self.certificates: list[ServerCertificates] = []  # [tls]: reloaded when the files change, and on SIGHUP

    # -- leadership (the gateway's LeaderGate) ---------------------------------------------------

    def leader_endpoint(self) -> str | None:
        """Where consumers should go: the leader's advertised endpoint (ours while we lead)."""
        return self.leadership.election.leader_endpoint() if self.leadership else None

    def leader_token(self) -> int:
        info = self.leadership.election.leader_info() if self.leadership else None
        return info.token if info else 0

    def epoch(self) -> int | None:
        return self._epoch if self.acting else None

    def _leader_agent_endpoint(self) -> str | None:
        info = self.leadership.election.leader_info() if self.leadership else None
        return (info.agent_endpoint or info.endpoint) if info else None

    def agent_redirect(self) -> str | None:
        """Where a stream whose term ended goes: the leader (ourselves if we lead again), if known."""
        if self.leadership is None:
            return None
        leader = self._leader_agent_endpoint()
        return None if leader == self.cfg.advertise_agents and not self.acting else leader

    async def agent_target(self, host_id: str) -> str | None:
        return await self.agent_redirects.target(f"agent:{host_id}") if self.leadership else None

    async def require_leader(self, context: grpc.aio.ServicerContext, key: str = "") -> None:
        """Unless acting, abort UNAVAILABLE naming the leader. ``key`` (a subscription id) identifies a client
        that may be held while the election settles (``inspector/ha/redirects.py``) — and served, if we lead then."""
        if self.acting:
            return
        hint = (await self.consumer_redirects.target(f"sub:{key}") if key and self.leadership else None)
        if self.acting:
            return
        hint = hint or self.leader_endpoint() or ""
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"not the leader: the leader is at {hint}" if hint else "not the leader; none is elected yet",
                            trailing_metadata=(("doctor-leader", hint),))

    async def serve_consumers(self, context: grpc.aio.ServicerContext, key: str = "") -> None:
        """The consumers' gate: the acting replica serves them, and so does a follower that follows the log;
        one that lost sight of it sends them on like ``require_leader``."""
        if self.acting or (self.feed is not None and self.feed.fresh()):
            return
        await self.require_leader(context, key)

    def _subscription_ended(self) -> None:
        self.heap_trim.ended()  # what its stream freed goes back to the system (doctor_common/heap_trim.py)
        PACING.ended()          # what it left in cycles waits for a thaw (doctor_common/gc_pacing.py)

    def _position(self) -> int:
        """The last entry this replica's subscribers were offered (the log's end where it is written)."""
        return self.log.last_sequence if self.acting else self.registry.last_sequence

    # -- following the log (a replica that does not lead) ---------------------------------------

    def _relay(self, n: fault_pb2.FaultNotification) -> None:
        self.view.follow(n)
        self.registry.fan_out(n)

    def _follow_alarms(self, records: dict[str, dict[str, Any]]) -> None:
        alarms = []
        for alarm_id, d in records.items():
            try:
                alarms.append(alarm_from_json(d, self.resources.servers.get, self.resources.ports.get))
            except (KeyError, TypeError, ValueError) as exc:  # another version's record: skipped, not fatal
                log.error("ignoring the alarm record %s: %s: %s", alarm_id, type(exc).__name__, exc)
        self.alarms.replace(alarms)

    def _follow_alarm(self, alarm_id: str, data: dict[str, Any] | None) -> None:
        if data is None:
            self.alarms.clear(alarm_id)
        else:
            self.alarms.add(alarm_from_json(data, self.resources.servers.get, self.resources.ports.get))

    def _feed_fresh(self, fresh: bool) -> None:
        if not fresh and not self.acting:
            ended = self.registry.end_all(UNSERVED, self.leader_endpoint() or "")
            log.warning("%s lost sight of the notification log in etcd: %d subscriptions sent to another replica",
                        self.cfg.node_id, ended)
        elif fresh and not self.acting:
            log.info("%s follows the notification log at %d: serving consumers", self.cfg.node_id,
                     self.registry.last_sequence)
        task = asyncio.create_task(self._set_health(self.acting))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def lead(self, term: Term) -> None:
        """A term begins: read what the previous leader left in etcd, then act until cancelled (term lost)."""
        started = time.monotonic()
        self.term = self.durable.term = term
        await self.log.load()
        if self.feed is not None:
            # this replica's subscribers get every entry of earlier terms before the first of its own
            await self.feed.stop()
            await self.feed.catch_up(self.log.last_sequence)
            self.book.local_only = False
        try:
            if isinstance(self.controller, EtcdEmbeddedController):
                await self.controller.sync()  # what the previous leader marked, whatever this replica's watch saw
            await self.resources.load()
        except Exception as exc:  # noqa: BLE001 - a controller outage must not stop a takeover: the map is cached
            log.warning("could not refresh the resource map at takeover, using the cached one: %s", exc)
        incidents, expected = await self._restore()
        sessions = await self.maintenance.restore()
        self._epoch += 1
        self.acting, self.role = True, "leader"
        await self._set_health(True)
        for inc in incidents.values():
            self._act(self.responder.recovery.resume(inc), f"finishing incident {inc.incident_id}")
        for session in sessions:
            self.maintenance.resume(session)
        self._warm_bmcs()
        self._warm_controller()
        log.warning("%s leads (token %d), ready in %.0f ms: %d alarms, %d incidents to finish, %d subscriptions, "
                    "log at %d; waiting up to %.1fs for %d agents", self.cfg.node_id, term.token,
                    (time.monotonic() - started) * 1e3, len(self.alarms), len(incidents), len(self.book.records),
                    self.log.last_sequence, self.cfg.takeover_grace_s, len(expected))
        loops = self._leader_loops()
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
            raise RuntimeError("a leader loop ended")
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _restore(self) -> tuple[dict[str, Any], set[str]]:
        """Carry on from what the previous leader (or this process's previous run) left: alarms, subscriptions,
        the hosts it had up (expected back within the takeover grace), the incidents to finish."""
        alarms, hosts, incidents = await self.durable.load()
        self.alarms.replace([alarm_from_json(d, self.resources.servers.get, self.resources.ports.get)
                             for d in alarms.values()])
        await self.book.load()
        self.guard.reset()
        self.responder.causes.took_over()
        self.liveness.reset()
        for h, d in hosts.items():  # a host that rebooted meanwhile is still told apart
            if d.get("host_boot_id"):
                self.liveness.record(h).host_boot_id = str(d["host_boot_id"])
        expected = {h for h, d in hosts.items() if d.get("liveness") == UP and h in self.resources.hosts}
        # a host suspected for silence and not fenced yet is judged afresh: declared again only if still silent
        expected |= {a.host for a in self.alarms.incidents() if a.silence and a.withdrawable}
        for host in expected:  # connected before: noticed if they do not come back
            self.liveness.expect(host, self.cfg.takeover_grace_s)
        return incidents, expected

    async def follow(self) -> None:
        """Not (or no longer) leading: stop acting now, send agents to the leader; consumers stay, served from
        the log the leader writes."""
        was = self.acting
        self.acting, self.role, self.term = False, "follower", None
        self.durable.term = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.responder.recovery.cancel_all()
        self.maintenance.clear()
        self.guard.reset()
        self.book.clear()
        self.book.local_only = True
        self.liveness.reset()
        if self.feed is not None:  # from a fresh read: alarms and subscription records as etcd holds them
            await self.feed.stop()
            self.feed.start(vouch=was)  # kept subscribers are sent away if etcd stays out of reach
        await self._set_health(False)
        if was:
            log.warning("%s stopped leading: agents are sent away; its %d subscriptions stay, served from the log",
                        self.cfg.node_id, len(self.registry))

    async def _set_health(self, serving: bool) -> None:
        if self.health is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in LEADER_ONLY:
            await self.health.set(name, status)
        consumers = serving or (self.feed is not None and self.feed.fresh())
        await self.health.set(CONSUMERS, health_pb2.HealthCheckResponse.SERVING if consumers
                              else health_pb2.HealthCheckResponse.NOT_SERVING)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.cfg.gc_freeze and not self._gc_paced:  # full collections walk only what is new (gc_pacing.py)
            self._gc_paced = True
            PACING.install()
        await self.resources.load()
        restored: tuple[dict[str, Any], set[str]] = ({}, set())
        sessions = []
        if self.leadership is None:
            # what a previous run of this process left, read before anyone is served: an agent attaching first
            # would be forgotten by the restore (and its host, expected but never heard, declared unreachable)
            restored = await self._restore()
            sessions = await self.maintenance.restore()
        # the keepalive finds a silent peer (a ping unanswered for ping_timeout_ms: within the liveness timeout, by
        # default) without Python per ping; the kernel's TCP state of the closed connection tells silence from an
        # agent's death (southbound/tcp_peer.py): a live host too busy to answer in time is an agent alarm
        keepalive = server_options(keepalive_ms=self.cfg.keepalive_ms, ping_timeout_ms=self.cfg.ping_timeout_ms)
        server = grpc.aio.server(options=keepalive, interceptors=[DecodeErrorInterceptor()])
        gateway = AgentGatewayServicer(
            self.auth, self.liveness, self.resources.ensure_host, self._on_state,
            self.cfg.heartbeat_interval_ms, self, self.guard.is_switch, self._on_switch,
            admission=self.agent_admission, ended=PACING.ended)
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, server)
        add_fault_management(FaultManagementServicer(
            self.auth, self.view, self.log, self.registry, self.book, self.serve_consumers,
            admission=self.subscription_admission, position=self._position,
            following=lambda: not self.acting and self.feed is not None, ended=self._subscription_ended), server)
        diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server(DiagnosticsServicer(self), server)
        diagnostics_pb2_grpc.add_HostsServicer_to_server(HostsServicer(self), server)
        maintenance_pb2_grpc.add_MaintenanceServicer_to_server(MaintenanceServicer(
            self.auth, self.maintenance, self.require_leader), server)
        self.health = await add_health_and_reflection(server, SERVICES)
        listeners, self.certificates = server_listeners(self.cfg.tls, self.cfg.listen)
        for address, credentials in listeners:
            port = (server.add_secure_port(address, credentials) if credentials is not None
                    else server.add_insecure_port(address))
            if port == 0 and not address.startswith("unix:"):
                raise OSError(f"cannot listen on {address}")
            self.ports.append(port)
        await server.start()
        self.server = server
        tcp_ports = {port for (address, _), port in zip(listeners, self.ports) if not address.startswith("unix:")}
        # read here, in the same turn as the start (a few ms, once): an await would let clients find the gRPC
        # port open before the HTTP one and the leadership campaign
        if tcp_ports and not tcp_peer.listening(tcp_ports):
            # the kernel's word on the agents' connections cannot be read here: judged as before it was asked
            log.error("the TCP connection tables (%s) do not show this inspector's own listeners: silence is judged "
                      "by heartbeats alone, and a closed stream is an agent's death only if heard from recently "
                      "(docs/agent.md, \"Liveness\")", ", ".join(tcp_peer.TABLES))
            self.liveness.peer_silent = self.liveness.open_peer_silent = self.liveness.peer_silent_afresh = None
        # every replica, whatever its role (a follower's leadership changes must not cancel it): its own streams
        self._keystone_watch = asyncio.create_task(watch_keystone_streams(self.auth, self.registry),
                                                   name="Keystone tokens of live streams")
        if self.cfg.http_events is not None:
            self.http_events = HttpEvents(self.cfg.http_events, gateway, self.auth)
            await self.http_events.start()
        if self.metrics is not None:
            await self.metrics.start(self.cfg.metrics_listen)  # a port taken fails the start, like gRPC's
        if self.leadership is not None:
            await self._set_health(False)
            assert self.feed is not None
            self.feed.start()
            self._loops = [self.leadership.start(self),
                           asyncio.create_task(self.resources.refresh_forever(), name="resources")]
            e = self.leadership.config
            log.info("inspector %s serving on %s; campaigning in etcd %s under %s (lease TTL %ds), advertising %s",
                     self.cfg.node_id, ", ".join(self.cfg.listen), ",".join(e.endpoints), e.prefix, e.lease_ttl_s,
                     self.cfg.advertise)
            return
        incidents, expected = restored
        for inc in incidents.values():
            self._act(self.responder.recovery.resume(inc), f"finishing incident {inc.incident_id}")
        for session in sessions:
            self.maintenance.resume(session)
        if incidents or expected or len(self.alarms):
            log.warning("carrying on from the previous run: %d alarms, %d incidents to finish, %d subscriptions, "
                        "log at %d; waiting up to %.1fs for %d agents", len(self.alarms), len(incidents),
                        len(self.book.records), self.log.last_sequence, self.cfg.takeover_grace_s, len(expected))
        self._warm_bmcs()
        self._warm_controller()
        self._loops = self._leader_loops()
        log.warning("STANDALONE MODE: one inspector, its state on this machine only"
                    + (f" (notifications and subscriptions in {self.cfg.notifier_state})" if self.local else
                       " (notifications in memory: set [notifier] state to keep them across restarts)")
                    + ": NOT highly available "
                    "(add an [etcd] table and run several replicas for that; docs/ha.md)")
        log.info("inspector %s serving on %s", self.cfg.node_id, ", ".join(self.cfg.listen))

    async def stop(self, grace: float = 1.0) -> None:
        if self._gc_paced:
            self._gc_paced = False
            PACING.uninstall()
        self.liveness.closing = True  # the agents' streams end because we end them: no agent died
        if self.leadership is not None:
            await self.leadership.stop_campaign()  # hands over at once
        if self.feed is not None:
            await self.feed.stop()
        watch = [self._keystone_watch] if self._keystone_watch is not None else []
        for t in [*self._loops, *self._tasks, *watch]:
            t.cancel()
        await asyncio.gather(*self._loops, *self._tasks, *watch, return_exceptions=True)
        if self.http_events is not None:
            await self.http_events.stop()
        if self.server is not None:
            quiet_stop_cancellations()  # the stop cancels the streams still open: not an error each
            await self.server.stop(grace)
        if self.metrics is not None:
            await self.metrics.stop()
        await self.heap_trim.close()
        for closing in (self.book, self.agent_redirects, self.consumer_redirects, self.probe):
            await closing.close()
        if self.leadership is not None:
            await self.leadership.close()
        await self.fencer.close()
        await self.controller.close()
        self.auth.close()  # Keystone's validation threads and connections, if any
        if self.local is not None:
            await self.local.close()

    async def reload(self) -> bool:
        """SIGHUP: read the configuration again and take its tokens, consumers, policy and (embedded) inventory.
        Everything is checked first; a file with a mistake changes nothing, and the log says which file and key.
        What only a restart can change (addresses, etcd, timings) is named if it changed."""
        path = self.cfg.path
        async with self._reloading:  # one at a time: two SIGHUPs in a row apply one version, then the next
            try:
                new = await asyncio.to_thread(load_inspector_config, path, build_controller=False)
                reload_inventory = getattr(self.controller, "reload", None)
                counts = await reload_inventory() if reload_inventory is not None else None
            except ConfigError as exc:
                log.error("reload refused, the running configuration is kept: %s", exc)
                return False
            except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon down
                log.error("reload failed, the running configuration is kept: %s: %s", type(exc).__name__, exc)
                return False
            for holder in self.certificates:  # the next TLS handshake reads the certificate files again
                holder.reload()
            return await self._apply(new, counts)

    async def _apply(self, new: InspectorConfig, counts: tuple[int, int, int] | None) -> bool:
        path = self.cfg.path
        self.auth.replace(new.auth)
        self._revoke()
        self.responder.policy = new.policy
        kept = [k for k in ("listen", "etcd", "node_id", "advertise", "advertise_agents", "heartbeat_interval_ms",
                            "liveness_timeout_s", "keepalive_ms", "guard", "bmcs", "notifier_state", "http_events", "metrics_listen",
                            "log_format", "tls")
                if getattr(new, k) != getattr(self.cfg, k)]
        try:
            await self.resources.load()
        except Exception as exc:  # noqa: BLE001 - the map is refreshed again later; the reload stands
            log.warning("reloaded, but the resource map could not be read again yet: %s", exc)
        log.warning("configuration reloaded from %s: %d policy rules, tokens and consumers%s%s", path,
                    len(new.policy.rules), f", inventory ({counts[0]} hosts, {counts[1]} servers)" if counts else "",
                    f"; needs a restart to take effect: {', '.join(kept)}" if kept else "")
        return True

    def _revoke(self) -> None:
        """After a reload: end the streams opened with credentials that no longer stand for the same identity
        (a consumer removed or made another project's; an agent token removed), so they must authenticate anew."""
        revoked = [sub for sub in self.registry if not self.auth.still_consumer(sub.credential, sub.principal)]
        for sub in revoked:
            sub.end(REVOKED)
        agents = [r for r in self.liveness.hosts.values()
                  if r.connected and r.credential and not self.auth.still_agent(r.credential, r.host_id)]
        for rec in agents:
            rec.revoked = True
        if revoked or agents:
            log.warning("reload withdrew credentials: %d subscriptions and %d agent streams ended", len(revoked),
                        len(agents))

    def _leader_loops(self) -> list[asyncio.Task[Any]]:
        """What the acting replica runs: its own lag, liveness, shared causes, the resource map's refresh."""
        return [asyncio.create_task(self.lag.run(), name="lag"),
                asyncio.create_task(self.liveness.watch(), name="liveness"),
                asyncio.create_task(self.responder.causes.watch(), name="shared causes"),
                asyncio.create_task(self.absent.watch(), name="absent agents"),
                # a replica refreshes its map whether it leads or not (``start``)
                *([] if self.leadership else [asyncio.create_task(self.resources.refresh_forever(), name="resources")])]

    def _any_quiet(self) -> bool:
        """Could any host count as quiet (``view_of``: unreachable, or up and unheard past quiet_after_s)? The
        liveness records alone, without each host's view."""
        now, limit, silence = time.monotonic(), self.quiet_after_s, self.liveness.silence
        return any(rec.liveness == UNREACHABLE or (rec.liveness == UP and silence(rec, now) > limit)
                   for rec in self.liveness.hosts.values())

    def _host_view(self, host: str) -> HostView:
        """The host as the fleet guard counts it (``response.fleet_guard.view_of``)."""
        rec = self.liveness.hosts.get(host)
        if rec is None:
            return HostView(False, False, False)
        h = self.resources.hosts.get(host)
        incident = self.alarms.incident(host)
        return view_of(rec.liveness, self.liveness.silence(rec), self.quiet_after_s, self.cfg.guard.window_s,
                       # a host disabled by a maintenance session still emptying runs servers: it is watched
                       out_of_service=h is not None and (h.forced_down or (h.disabled and not
                                                                            self.maintenance.session_active(host))),
                       judged=incident is not None and (incident.fenced or incident.fencing
                                                        or incident.phase == fault_pb2.INCIDENT_PHASE_UNFENCED),
                       held=incident is not None and incident.phase == fault_pb2.INCIDENT_PHASE_HELD)

    async def enable_blockers(self, host: str) -> list[str]:
        """What still says the host is not fit to serve: its agent's faulty components, an agent not connected,
        a BMC reporting power off or not answering (``EnableHost`` refuses unless forced)."""
        wrong = []
        rec = self.liveness.hosts.get(host)
        if rec is None or not rec.connected:
            wrong.append(f"its agent is not connected ({rec.liveness if rec else 'never seen'}): its state is unknown")
        else:
            wrong += [f"its agent reports {c.component} {agent_pb2.ComponentStatus.Name(c.status).removeprefix('COMPONENT_STATUS_').lower()}"
                      f" ({c.fault_type}: {c.description})" for c in rec.components.values() if c.status in FAULTY]
        bmc = self.responder.bmc_for(host)
        if bmc is not None:
            try:
                if await self.fencer.power_state(bmc, min(5.0, self.fencer.timeout_s)) == "off":
                    wrong.append("its BMC reports power off: power it on first")
            except Exception as exc:  # noqa: BLE001 - said, not raised
                wrong.append(f"its BMC does not answer ({exc or type(exc).__name__}): it could not be fenced again")
        return wrong

    def _facts(self, host: str) -> dict[str, str]:
        rec = self.liveness.hosts.get(host)
        return rec.facts if rec is not None else {}

    def resync(self, host: str) -> None:
        """Forget the host's levels and ask its agent for all of them again: a fault still there is raised anew
        (the agent sends a level only when it changes)."""
        rec = self.liveness.hosts.get(host)
        if rec is not None:
            rec.components.clear()
            self._faults_responded = {k for k in self._faults_responded if k[0] != host}
            rec.resync = True

    def guard_status(self) -> diagnostics_pb2.GuardStatus:
        """Whether the fleet guard holds and why, and how far behind this replica runs (Diagnostics)."""
        incidents = self.alarms.incidents() if self.acting else []
        return diagnostics_pb2.GuardStatus(
            enabled=self.cfg.guard.enabled, behind=self.lag.behind(), loop_lag_ms=self.lag.last_late_s * 1e3,
            worst_loop_lag_ms=self.lag.worst_s * 1e3, read_delay_ms=self.lag.read_delay_s() * 1e3,
            lost_ms=self.lag.lost_s * 1e3,
            causes=[diagnostics_pb2.GuardCause(cause=c.key, resource=c.resource, description=c.describe(),
                                               hosts=list(c.hosts)) for c in (self.guard.causes() if self.acting else [])],
            held=sum(1 for a in incidents if a.phase == fault_pb2.INCIDENT_PHASE_HELD),
            waiting=self.responder.recovery.waiting(), fences_allowed=self.guard.fences_allowed)

    def main_loops(self) -> list[asyncio.Task[Any]]:
        """The loops the replica lives by (leadership, or liveness and friends when standalone): one that ends
        must end the daemon, so systemd restarts it."""
        return list(self._loops)

    def _warm_bmcs(self) -> None:
        for host in self.resources.hosts:
            bmc = self.responder.bmc_for(host)
            if bmc is not None:
                self._spawn(self.fencer.warm(bmc), f"warm BMC of {host}")

    def _warm_controller(self) -> None:
        """A controller that connects ahead (OpenStack: authenticate, discover, the fault path's HTTP client) does
        so now: the first fault pays for none of it."""
        connect = getattr(self.controller, "connect", None)
        if connect is None:
            return

        async def warm() -> None:
            try:
                await connect()
            except Exception as exc:  # noqa: BLE001 - best effort: the first call connects for real, and reports
                log.warning("the controller could not be connected ahead of faults: %s: %s", type(exc).__name__, exc)
        self._spawn(warm(), "connect the controller")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if isinstance(exc, NotLeader):
                log.info("%s stopped: %s", what, exc)  # the term ended: the next leader carries on
            elif exc is not None:
                log.error("%s failed", what, exc_info=exc)
        task.add_done_callback(done)

    def _act(self, coro: Any, what: str) -> None:
        """Respond under the current term: cancelled the moment it is lost."""
        term = self.term
        self._spawn(term.run(coro) if term is not None else coro, what)

    # -- from the agents -----------------------------------------------------------------------

    def _on_state(self, rec: HostRecord, state: agent_pb2.ComponentState, observed_ns: int, sent_ns: int,
                  received_ns: int) -> None:
        if not self.acting:
            return
        key = (rec.host_id, state.component)
        if state.status in FAULTY and state.fault_type:
            self._faults_responded.add(key)
            trigger = trigger_from_state(rec.host_id, state, observed_ns, sent_ns, received_ns)
            self._act(self.responder.fault(trigger), f"response to {trigger.fault_type} on {rec.host_id}")
        elif state.status == agent_pb2.COMPONENT_STATUS_OK and (
                key in self._faults_responded or self.alarms.raised_by(*key) is not None):
            # most OK readings (every healthy component of every Hello) have nothing to clear: no task for them.
            # A fault response may not have raised its alarm yet (it waits for the host's lock): the clear
            # queues behind it on that lock.
            self._faults_responded.discard(key)
            self._act(self.responder.clear(rec.host_id, state.component), f"clearing {state.component}")

    def _on_switch(self, switch: str, state: agent_pb2.ComponentState) -> None:
        """A monitor's word on a switch: the guard counts it; the shared causes' watch raises or clears its
        alarm and judges the hosts it held."""
        if self.acting:
            down = state.status in FAULTY
            log.warning("switch %s reported %s by %s: %s", switch, "down" if down else "up", state.checker,
                        state.fault_type or state.description)
            self.guard.switch_reported(switch, down, state.description or state.fault_type)

    async def _liveness_changed(self, rec: HostRecord, old: str, new: str) -> None:
        if not self.acting or not self.liveness.current(rec):
            return
        if self.leadership is not None or self.local is not None:
            self._act(self.durable.save_host(rec.host_id, new, rec.boot_id, rec.host_boot_id),
                      f"liveness of {rec.host_id}")
        now = now_ns()
        if new == UNREACHABLE:
            self._act(self.responder.fault(Trigger(
                rec.host_id, "compute.host.unreachable", common_pb2.SEVERITY_CRITICAL, component="agent",
                description=f"no message from the agent for {self.cfg.liveness_timeout_s * 1000:.0f} ms",
                details={"last_seen_unix_nanos": str(rec.last_seen_ns)}, observed_ns=now, received_ns=now)),
                f"unreachable {rec.host_id}")
        elif new == AGENT_DOWN:
            self._act(self.responder.fault(Trigger(
                rec.host_id, "compute.host.agent.down", common_pb2.SEVERITY_MAJOR, component="agent",
                description=("the agent has sent nothing past the silence limit while its host's kernel answers "
                             "on its connection: agent stalled, host alive" if rec.connected else
                             "the agent's stream was closed by its host: agent died, host alive"),
                observed_ns=now, received_ns=now)), f"agent down {rec.host_id}")
        elif new in (UP, STOPPED) and (old in (AGENT_DOWN, UNREACHABLE, STOPPED)
                                       or self.alarms.raised_by(rec.host_id, "agent") is not None):
            # the second case: an agent alarm a previous leader raised, and the agent is back
            self._act(self.responder.clear(rec.host_id, "agent"), f"agent back {rec.host_id}")

"""Prometheus metrics of one inspector replica, served on an HTTP listener of their own (``[metrics] listen``).

Each replica has its own ``CollectorRegistry`` (tests run several in one
process). What changes often is counted where it happens and cheaply: the
decisions through the audit trail's listener (``doctor_common/audit.py``:
faults, verdicts, fences, notifications, operators, rejected clients), and
etcd and controller calls by timing wrappers put on the client objects
(their label children resolved once). What is state — hosts by liveness,
the fleet guard, subscribers and their queues, the log's sequence,
leadership — is read when Prometheus scrapes (``_StateCollector``), so the
event path pays nothing for it. The listener runs on the event loop
(aiohttp): a scrape reads the state between two loop steps, never while it
changes. Every metric is described in ``docs/metrics.md``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from doctor_common import __version__
from doctor_common.api import diagnostics_pb2, fault_pb2
from inspector.southbound.liveness import AGENT_DOWN, STOPPED, UNKNOWN, UNREACHABLE, UP

log = logging.getLogger("doctor.inspector.metrics")

LIVENESS = (UP, AGENT_DOWN, UNREACHABLE, STOPPED, UNKNOWN)
# the fault chain's stages run from a millisecond to the controller's seconds
STAGE_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)
CALL_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
MAX_FAULT_TYPES = 200  # fault types come from agents and monitors: beyond this many, counted as "other"
ETCD_CALLS = ("get", "get_prefix", "get_range", "put", "delete", "delete_prefix", "transaction", "lease",
              "revoke_lease", "refresh_lease")
CONTROLLER_CALLS = ("list_hosts", "get_host", "servers_on_host", "list_servers", "ports_on_host", "list_ports",
                    "force_down", "set_disabled", "reset_servers_state", "set_ports_data_plane_status",
                    "server_host_status", "set_servers_running", "migrate_server", "host_is_empty",
                    "settle_migrations")


class Observed(Protocol):
    """What the metrics read of the inspector replica (``inspector/core.py``); every read is cheap."""

    role: str
    acting: bool
    liveness: Any
    resources: Any
    registry: Any
    book: Any
    log: Any
    alarms: Any
    controller: Any
    leadership: Any
    cfg: Any
    agent_admission: Any
    subscription_admission: Any

    def leader_token(self) -> int: ...

    def guard_status(self) -> diagnostics_pb2.GuardStatus: ...


def _timed(fn: Callable[..., Awaitable[Any]], name: str, seconds: Histogram,
           errors: Counter) -> Callable[..., Awaitable[Any]]:
    child: Any = None  # the label's histogram, made on the first call: a method never called costs no scrape

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal child
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except Exception:
            errors.labels(name).inc()
            raise
        finally:
            if child is None:
                child = seconds.labels(name)
            child.observe(time.perf_counter() - started)
    return call


def instrument(obj: Any, names: tuple[str, ...], seconds: Histogram, errors: Counter) -> list[str]:
    """Time each named coroutine method of ``obj`` (on the instance: its class and other instances are left
    alone); returns the names instrumented."""
    done = []
    for name in names:
        fn = getattr(obj, name, None)
        if fn is None or not inspect.iscoroutinefunction(fn):
            continue
        setattr(obj, name, _timed(fn, name, seconds, errors))
        done.append(name)
    return done


class InspectorMetrics:
    """The replica's registry, its counters (fed by the audit trail) and its HTTP listener."""

    def __init__(self, inspector: Observed) -> None:
        self.i = inspector
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.faults = Counter("doctor_faults", "Faults received, by fault type and what the policy made of them",
                              ["fault_type", "outcome"], registry=r)
        self.verdicts = Counter("doctor_guard_verdicts", "The fleet guard's verdicts on suspicions",
                                ["verdict"], registry=r)
        self.fence_attempts = Counter("doctor_fence_attempts", "Fence attempts (power off and confirm)", registry=r)
        self.fence_results = Counter("doctor_fence_results", "Fence outcomes: ok, already_off, failed",
                                     ["result"], registry=r)
        self.published = Counter("doctor_notifications_published", "Notifications appended to the log and fanned out",
                                 registry=r)
        self.recipients = Counter("doctor_notification_recipients",
                                  "Subscribers offered a notification, summed over notifications", registry=r)
        self.operator = Counter("doctor_operator_actions", "Operators' and consumers' acts, by action and outcome",
                                ["action", "outcome"], registry=r)
        self.rejected = Counter("doctor_rejected_clients", "Clients turned away, by kind", ["kind"], registry=r)
        self.stage = Histogram("doctor_fault_stage_seconds",
                               "Time each stage added to a fenced fault's chain (the profiler's stages)", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.chain = Histogram("doctor_fault_chain_seconds", "A fenced fault's chain from observed to published",
                               buckets=STAGE_BUCKETS, registry=r)
        self.etcd_seconds = Histogram("doctor_etcd_call_seconds", "etcd calls, by client method", ["call"],
                                      buckets=CALL_BUCKETS, registry=r)
        self.etcd_errors = Counter("doctor_etcd_call_errors", "etcd calls that raised, by client method", ["call"],
                                   registry=r)
        self.controller_seconds = Histogram("doctor_controller_call_seconds", "Controller calls, by method",
                                            ["call"], buckets=CALL_BUCKETS, registry=r)
        self.controller_errors = Counter("doctor_controller_call_errors", "Controller calls that raised, by method",
                                         ["call"], registry=r)
        r.register(_StateCollector(inspector))
        self._fault_types: set[str] = set()
        instrument(inspector.controller, CONTROLLER_CALLS, self.controller_seconds, self.controller_errors)
        if inspector.leadership is not None:
            instrument(inspector.leadership.client, ETCD_CALLS, self.etcd_seconds, self.etcd_errors)
        self._runner: web.AppRunner | None = None
        self.port = 0  # bound by start()

    # -- the audit trail's listener ------------------------------------------------------------

    def on_audit(self, event: str, f: dict[str, Any]) -> None:
        if event == "fault":
            ft = f["fault_type"]
            if ft not in self._fault_types:
                if len(self._fault_types) >= MAX_FAULT_TYPES:
                    ft = "other"
                else:
                    self._fault_types.add(ft)
            self.faults.labels(ft, f["verdict"]).inc()
        elif event == "judged":
            self.verdicts.labels(f["verdict"]).inc()
        elif event == "fence_attempt":
            self.fence_attempts.inc()
        elif event == "fence_result":
            self.fence_results.labels(f["result"]).inc()
        elif event == "published":
            self.published.inc()
            self.recipients.inc(f["recipients"])
        elif event == "operator":
            self.operator.labels(f["action"], f["outcome"]).inc()
        elif event == "rejected":
            self.rejected.labels(f["kind"]).inc()
        elif event == "profiled":
            total = 0.0
            for stage, ms in f["stages"]:
                self.stage.labels(stage).observe(ms / 1e3)
                total += ms
            self.chain.observe(total / 1e3)

    # -- the HTTP listener ----------------------------------------------------------------------

    async def start(self, listen: str) -> int:
        """Serve /metrics on ``listen`` (host:port, port 0 for any); returns the bound port."""
        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/", self._scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = self._runner.addresses[0][1]
        log.info("metrics served on http://%s:%d/metrics", host, self.port)
        return self.port

    async def _scrape(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _StateCollector(Collector):
    """Gauges read from the replica's state at scrape time."""

    def __init__(self, inspector: Observed) -> None:
        self.i = inspector

    def describe(self) -> list[Metric]:
        return []  # unchecked: the families depend on the state

    def collect(self) -> Iterator[Metric]:
        i = self.i
        info = GaugeMetricFamily("doctor_inspector_info", "This replica: node, version and role (always 1)",
                                 labels=["node_id", "version", "role"])
        info.add_metric([i.cfg.node_id, __version__, i.role], 1)
        yield info
        yield GaugeMetricFamily("doctor_inspector_leader", "1 while this replica acts (leads, or standalone)",
                                value=1 if i.acting else 0)
        yield GaugeMetricFamily("doctor_inspector_leader_token",
                                "The elected leader's fencing token (etcd create revision; 0 standalone or none)",
                                value=i.leader_token())

        hosts = GaugeMetricFamily("doctor_hosts", "Hosts the inspector tracks, by liveness", labels=["liveness"])
        counts = dict.fromkeys(LIVENESS, 0)
        connected = 0
        for rec in list(i.liveness.hosts.values()):
            counts[rec.liveness] = counts.get(rec.liveness, 0) + 1
            connected += rec.connected
        for state, n in counts.items():
            hosts.add_metric([state], n)
        yield hosts
        yield GaugeMetricFamily("doctor_agents_connected", "Agents with a live stream to this replica",
                                value=connected)
        yield GaugeMetricFamily("doctor_inventory_hosts", "Hosts in the controller's inventory (the resource map)",
                                value=len(i.resources.hosts))
        incidents = i.alarms.incidents() if i.acting else []
        yield GaugeMetricFamily("doctor_alarms_active", "Active alarms", value=len(i.alarms))
        phases = GaugeMetricFamily("doctor_incidents", "Open fencing incidents, by phase", labels=["phase"])
        by_phase: dict[str, int] = {}
        for a in incidents:
            name = fault_pb2.IncidentPhase.Name(a.phase).removeprefix("INCIDENT_PHASE_").lower()
            by_phase[name] = by_phase.get(name, 0) + 1
        for name, n in sorted(by_phase.items()):
            phases.add_metric([name], n)
        yield phases

        g = i.guard_status()
        yield GaugeMetricFamily("doctor_guard_enabled", "1 when the fleet guard judges suspicions", value=g.enabled)
        yield GaugeMetricFamily("doctor_guard_behind", "1 while this replica runs behind (silence is not counted)",
                                value=g.behind)
        yield GaugeMetricFamily("doctor_guard_causes", "Shared causes holding now (switch, zone, fleet)",
                                value=len(g.causes))
        yield GaugeMetricFamily("doctor_guard_held_hosts", "Suspicions held under a shared cause", value=g.held)
        yield GaugeMetricFamily("doctor_guard_waiting", "Suspicions waiting for the fence rate limit",
                                value=g.waiting)
        yield GaugeMetricFamily("doctor_loop_lag_seconds", "The event loop's last measured lag",
                                value=g.loop_lag_ms / 1e3)
        yield CounterMetricFamily("doctor_guard_fences_allowed", "Fences the fleet guard allowed",
                                  value=g.fences_allowed)

        subs = GaugeMetricFamily("doctor_subscribers", "Live subscriptions, by kind of principal", labels=["kind"])
        admins = projects = depth_sum = depth_max = 0
        for s in i.registry:
            if s.principal.admin:
                admins += 1
            else:
                projects += 1
            d = s.depth
            depth_sum += d
            depth_max = max(depth_max, d)
        subs.add_metric(["admin"], admins)
        subs.add_metric(["project"], projects)
        yield subs
        yield GaugeMetricFamily("doctor_subscriptions_detached",
                                "Known subscriptions with no live stream (resumable)", value=len(i.book.detached()))
        yield GaugeMetricFamily("doctor_subscriber_queue_depth_sum", "Deliveries queued, over every subscriber",
                                value=depth_sum)
        yield GaugeMetricFamily("doctor_subscriber_queue_depth_max", "The longest subscriber queue",
                                value=depth_max)
        yield GaugeMetricFamily("doctor_subscriber_queue_limit", "A subscriber is cut off past this many",
                                value=i.registry.queue_limit)
        yield CounterMetricFamily("doctor_subscribers_cut_off", "Subscribers cut off for falling behind",
                                  value=i.registry.cut_off)
        yield GaugeMetricFamily("doctor_notification_log_sequence", "The notification log's last sequence",
                                value=i.log.last_sequence)
        busy = GaugeMetricFamily("doctor_handshakes_in_progress", "Stream handshakes admitted and not over, by stream",
                                 labels=["stream"])
        refused = CounterMetricFamily("doctor_handshakes_refused", "Stream handshakes turned away (UNAVAILABLE, "
                                      "retry-after-ms) because max_handshakes were in progress, by stream",
                                      labels=["stream"])
        for stream, admission in (("agent", i.agent_admission), ("subscription", i.subscription_admission)):
            busy.add_metric([stream], admission.active)
            refused.add_metric([stream], admission.refused)
        yield busy
        yield refused

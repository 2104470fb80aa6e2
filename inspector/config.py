"""The inspector's TOML configuration, validated at start-up (errors name the file and key)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller_adapter import backend_class
from controller_adapter.base import Bmc
from controller_adapter.embedded_etcd import EtcdEmbeddedController
from doctor_common.auth import KEYSTONE_PREFIX, Principal, TokenAuth
from doctor_common.config import ConfigError, Section
from doctor_common.endpoint import parse_endpoint
from doctor_common.keystone import KeystoneSettings, KeystoneValidator, check_cloud
from doctor_common.logs import FORMATS
from inspector.ha.etcd_config import EtcdConfig
from inspector.maintenance.workflow import MaintenanceConfig
from inspector.response.fleet_guard import GuardConfig
from inspector.response.policy import Policy, default_policy, load_policy
from inspector.response.recovery import RetryPolicy
from inspector.southbound.http_events import HttpEventsConfig
from inspector.tls import TlsConfig


@dataclass(frozen=True)
class InspectorConfig:
    node_id: str
    listen: tuple[str, ...]
    controller: Any                      # a built Controller
    auth: TokenAuth
    policy: Policy
    bmcs: dict[str, Bmc] = field(default_factory=dict)
    heartbeat_interval_ms: int = 500
    liveness_timeout_s: float = 1.5
    keepalive_ms: int = 750              # the transport's pings (southbound/tcp_peer.py)
    ping_timeout_ms: int = 750           # and how long one may go unanswered (default: timeout − keepalive)
    gc_freeze: bool = True               # freeze survivors of full collections (doctor_common/gc_pacing.py)
    fencing_timeout_s: float = 5.0
    fencing_poll_s: float = 0.002
    fencing_retry_s: float = 0.05
    fence_retry: RetryPolicy = field(default_factory=RetryPolicy)
    guard: GuardConfig = field(default_factory=GuardConfig)
    max_lag_s: float = 0.3               # behind by more than this: nothing is declared unreachable
    absent_poll_s: float = 2.0           # BMC power state of hosts whose agent died or stopped, this often
    agent_return_deadline_s: float = 300.0  # an agent away longer than this is reported to administrators
    queue_limit: int = 1000
    retention: int = 10_000
    resource_refresh_s: float = 30.0
    log_level: str = "info"
    log_format: str = "text"             # "json": one JSON object per line (doctor_common/logs.py)
    metrics_listen: str = ""             # [metrics] listen: host:port of the Prometheus endpoint ("" off)
    path: str = ""
    etcd: EtcdConfig | None = None       # None: standalone (not highly available)
    advertise: str = ""                  # the endpoint consumers and tools are sent to when this replica leads
    advertise_agents: str = ""           # the endpoint agents are redirected to (default: advertise)
    takeover_grace_s: float = 10.0       # a new leader waits this long for agents that were connected before
    subscription_expiry_s: float = 86400.0
    notifier_state: str = ""             # standalone: the SQLite file of the log and subscriptions ("" in memory)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    max_handshakes: int = 256            # agent Hellos, and subscriptions being set up, at once (each kind)
    http_events: HttpEventsConfig | None = None  # the monitors' JSON over HTTP (PUT/POST /events); None: off
    tls: TlsConfig = field(default_factory=TlsConfig)  # [tls]: certificates on the listeners (docs/tls.md)


def _bmc(s: Section) -> Bmc:
    bmc = Bmc(address=s.str("address"), port=s.int("port", 623, min=1, max=65535),
              username=s.str("username", "admin"), password=s.secret("password") or "")
    s.done()
    return bmc


def _keystone(k: Section, openstack: Section | None) -> KeystoneValidator | None:
    """``[auth.keystone]``: consumers' Keystone tokens, validated with a cloud of clouds.yaml (by default the
    ``[controller.openstack]`` one). None when the table is absent or ``enabled = false``."""
    enabled = k.bool("enabled", True)
    cloud, clouds_yaml, origin = k.str("cloud", None), k.path("clouds_yaml", None), k
    if cloud is None and clouds_yaml is None and openstack is not None:  # the controller's own cloud
        cloud, clouds_yaml, origin = openstack.str("cloud", None), openstack.path("clouds_yaml", None), openstack
    if clouds_yaml is not None and not clouds_yaml.is_file():
        raise origin.error("clouds_yaml", f"no such file: {clouds_yaml}")
    roles = k.str_list("admin_roles", ["admin"])
    if not roles or not all(r.strip() for r in roles):
        raise k.error("admin_roles", "give the Keystone role names that make a token an administrator's "
                                     "(e.g. [\"admin\"])")
    settings = KeystoneSettings(
        cloud=cloud, clouds_yaml=clouds_yaml,
        timeout_s=k.float("timeout_s", 5.0, min=0.1, max=120.0),
        cache_s=k.float("cache_s", 60.0, min=0.0, max=3600.0),
        negative_cache_s=k.float("negative_cache_s", 5.0, min=0.0, max=3600.0),
        cache_size=k.int("cache_size", 10_000, min=1, max=10_000_000),
        max_in_flight=k.int("max_in_flight", 4, min=1, max=64),
        admin_roles=tuple(r.strip() for r in roles))
    k.done()
    if not enabled:
        return None
    try:
        check_cloud(settings)  # reads clouds.yaml only: a cloud it lacks fails here, not at every call
    except ValueError as exc:
        raise origin.error("cloud", f"{exc} (the cloud of clouds.yaml whose account validates consumers' "
                                    "tokens)") from None
    return KeystoneValidator(settings)


def _auth(a: Section, openstack: Section | None = None) -> TokenAuth:
    consumers: dict[str, Principal] = {}
    given: dict[str, str] = {}  # token -> the key that gave it first: one token, one identity

    def once(s: Section, token: str) -> None:
        if token in given:
            raise s.error("token", f"is also given to {given[token]}: one token must stand for one identity "
                                   "(whoever holds it could act as either)")
        given[token] = s.key("token")

    for c in a.sections("consumers"):
        token = c.secret("token")
        if not token:
            raise c.error("token", "is required (token or token_file)")
        once(c, token)
        admin = c.bool("admin", False)
        project = c.str("project", None)
        if admin == (project is not None):
            raise c.error("project", "give either project = \"...\" or admin = true")
        name = c.str("name", project or "admin")
        if name.startswith(KEYSTONE_PREFIX):
            raise c.error("name", f"{KEYSTONE_PREFIX!r} names the consumers Keystone vouches for: choose another")
        consumers[token] = Principal(name=name, project=project, admin=admin)
        c.done()
    agents: dict[str, str] = {}
    for g in a.sections("agents"):
        token = g.secret("token")
        if not token:
            raise g.error("token", "is required (token or token_file)")
        once(g, token)
        agents[token] = g.str("host")
        g.done()
    anonymous = a.bool("allow_anonymous_agents", False)
    keystone = _keystone(a.section("keystone"), openstack) if "keystone" in a.data else None
    a.done()
    return TokenAuth(consumers, agents, anonymous, keystone)


def _listen_address(i: Section, index: int, address: str, key: str = "listen") -> None:
    """host:port, [v6]:port, :port (every address) or unix:/path; a missing port would be gRPC's 443."""
    try:
        if address.startswith(":"):
            port = address[1:]
            if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"port {port!r} is not a number from 1 to 65535")
        else:
            parse_endpoint(address)
    except ValueError as exc:
        raise i.error(f"{key}[{index}]", f"{address!r}: {exc} (host:port, :port or unix:/path)") from None


def _metrics(s: Section) -> str:
    """[metrics] listen = "host:port" (port 0: any free one, logged); off without the table or the key."""
    listen = s.str("listen", "")
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or not host.strip("[]") or not (port.isascii() and port.isdigit() and int(port) < 65536):
            raise s.error("listen", f"{listen!r}: give host:port, port 0 to 65535 (e.g. \"127.0.0.1:9464\")")
    s.done()
    return listen


def _advertise(i: Section, listen: list[str]) -> str:
    """A replicated inspector must tell agents and consumers where it is: its first TCP address, if specific."""
    for address in listen:
        if address.startswith("unix:"):
            continue
        if address.startswith(":"):  # ":50051", gRPC's own way to say every address
            host = ""
        else:
            try:
                host = parse_endpoint(address)[0]
            except ValueError as exc:
                raise i.error("listen", str(exc)) from None
        if host in ("", "0.0.0.0", "::"):
            raise i.error("advertise", f"listen address {address!r} is a wildcard: give the address other replicas, "
                                       "agents and consumers reach this one at (advertise = \"10.0.0.1:50051\")")
        return address
    raise i.error("advertise", "with [etcd], give the host:port consumers reach this replica at")


def load_inspector_config(path: Path | str, *, build_controller: bool = True) -> InspectorConfig:
    """The inspector's configuration, every key checked. ``build_controller=False`` (a reload): the controller's
    table is checked for its backend's name only, and ``controller`` is None (the running one reloads itself)."""
    root = Section.load(path)
    i = root.section("inspector", required=True)
    node_id = i.str("node_id", "") or socket.gethostname()
    listen = i.str_list("listen", ["127.0.0.1:50051"])
    if not listen:
        raise i.error("listen", "give at least one address (host:port or unix:/path)")
    for index, address in enumerate(listen):
        _listen_address(i, index, address)
    policy_path = i.path("policy", None)
    opts: dict[str, Any] = dict(
        heartbeat_interval_ms=i.int("heartbeat_interval_ms", 500, min=10, max=60000),
        liveness_timeout_s=i.int("liveness_timeout_ms", 1500, min=50) / 1000,
        log_level=i.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=i.choice("log_format", FORMATS, "text"),
        resource_refresh_s=i.float("resource_refresh_s", 30.0, min=1.0),
    )
    # the transport's keepalive: a ping this often, answered in gRPC's core; one unanswered for ping_timeout_ms
    # ends the connection, judged by the kernel (southbound/tcp_peer.py): silence shows within keepalive + ping timeout
    # (default: half the timeout, at most a second — each ping costs the inspector ≈ 40 µs in gRPC's core)
    opts["keepalive_ms"] = i.int("keepalive_ms", min(1000, int(opts["liveness_timeout_s"] * 500)), min=50,
                                 max=60_000)
    if opts["keepalive_ms"] >= opts["liveness_timeout_s"] * 1000:
        raise i.error("keepalive_ms", "must be shorter than liveness_timeout_ms (a silent peer is found within the "
                                      "timeout plus one keepalive interval)")
    # a ping unanswered this long closes the connection (then judged by the kernel's word). By default timeout −
    # keepalive: a silent peer is found within the liveness timeout however rare the heartbeats. An agent too busy
    # to answer that fast is cut off, and its kernel's acknowledgement makes that an agent alarm, never a fence;
    # longer tolerates busier agents and finds silence later (by default never under 500 ms: an agent process on a
    # loaded host may take a few hundred ms to run)
    timeout_ms = int(opts["liveness_timeout_s"] * 1000)
    opts["ping_timeout_ms"] = i.int("ping_timeout_ms", min(timeout_ms, max(500, timeout_ms - opts["keepalive_ms"])),
                                    min=100, max=60_000)
    if opts["ping_timeout_ms"] > timeout_ms:
        raise i.error("ping_timeout_ms", "must not be longer than liveness_timeout_ms (the transport would find a "
                                         "silent peer later than the heartbeats could)")
    # full collections stop walking thousands of agent streams (docs/agent.md, "Liveness"); false: CPython as is
    opts["gc_freeze"] = i.bool("gc_freeze", True)
    opts["advertise"] = i.str("advertise", "")
    opts["advertise_agents"] = i.str("advertise_agents", "")
    opts["takeover_grace_s"] = i.int("takeover_grace_ms", 10_000, min=0) / 1000
    opts["absent_poll_s"] = i.int("absent_poll_ms", 2000, min=50) / 1000
    opts["agent_return_deadline_s"] = i.float("agent_return_deadline_s", 300.0, min=1.0)
    opts["max_handshakes"] = i.int("max_handshakes", 256, min=1, max=100_000)
    i.done()

    c = root.section("controller")
    backend = c.str("backend", "embedded")
    try:
        cls = backend_class(backend)
    except LookupError as exc:
        raise c.error("backend", str(exc)) from None
    sub = c.section(backend, required=True)
    c.done()

    f = root.section("fencing")
    opts["fencing_timeout_s"] = f.float("timeout_s", 5.0, min=0.1)
    opts["fencing_poll_s"] = f.int("poll_interval_ms", 2, min=1) / 1000
    opts["fencing_retry_s"] = f.int("ipmi_retry_ms", 50, min=5, max=5000) / 1000
    first = f.float("retry_first_s", 1.0, min=0.05)
    opts["fence_retry"] = RetryPolicy(first, f.float("retry_max_s", 30.0, min=first))
    bmcs = {host: _bmc(s) for host, s in f.table("bmc").items()}
    f.done()

    g = root.section("guard")
    opts["guard"] = GuardConfig(
        enabled=g.bool("enabled", True),
        max_silent_share=g.float("max_silent_share", 0.55, min=0.0, max=1.0),
        max_silent_hosts=g.int("max_silent_hosts", 3, min=0),
        min_zone_hosts=g.int("min_zone_hosts", 3, min=1),
        switch_min_hosts=g.int("switch_min_hosts", 2, min=2),
        settle_s=g.int("settle_ms", 150, min=0, max=10_000) / 1000,
        # silence spreading over hosts cut together shows within a heartbeat interval, or within two keepalive
        # intervals where the transport finds it first
        silence_settle_s=g.int("silence_settle_ms", min(opts["heartbeat_interval_ms"], 2 * opts["keepalive_ms"] + 100),
                               min=0, max=60_000) / 1000,
        window_s=g.float("window_s", 60.0, min=1.0),
        fence_rate_per_minute=g.float("fence_rate_per_minute", 6.0, min=0.0),
        fence_burst=g.int("fence_burst", 2, min=1),
        fleet_fence_rate_per_minute=g.float("fleet_fence_rate_per_minute", 12.0, min=0.0),
        fleet_fence_burst=g.int("fleet_fence_burst", 4, min=1),
        link_fault_types=tuple(g.str_list("link_fault_types", ["compute.host.nic.down"])))
    for index, pattern in enumerate(opts["guard"].link_fault_types):
        if not pattern or "*" in pattern:
            raise g.error(f"link_fault_types[{index}]", "give exact fault types (e.g. compute.host.nic.down)")
    opts["max_lag_s"] = g.int("max_lag_ms", max(50, int(opts["liveness_timeout_s"] * 200)), min=10) / 1000
    g.done()

    m = root.section("maintenance")
    opts["maintenance"] = MaintenanceConfig(
        reply_timeout_s=m.float("reply_timeout_s", 120.0, min=1.0, max=86400.0),
        empty_timeout_s=m.float("empty_timeout_s", 600.0, min=1.0, max=86400.0),
        max_parallel_moves=m.int("max_parallel_moves", 4, min=1, max=100))
    m.done()

    opts["metrics_listen"] = _metrics(root.section("metrics"))

    n = root.section("notifier")
    opts["queue_limit"] = n.int("queue_limit", 1000, min=1)
    opts["retention"] = n.int("retention", 10_000, min=1)
    opts["subscription_expiry_s"] = n.float("subscription_expiry_s", 86400.0, min=1.0)
    state = n.path("state", None)
    if state is None and backend == "embedded" and isinstance(sub.data.get("state"), str):
        state = Section(sub.file, dict(sub.data)).path("state").parent / "notifications.sqlite"  # beside it
    opts["notifier_state"] = str(state) if state is not None else ""
    n.done()

    if "etcd" in root.data:
        opts["etcd"] = EtcdConfig.from_section(root.section("etcd"))
        opts["advertise"] = opts["advertise"] or _advertise(i, listen)
        opts["advertise_agents"] = opts["advertise_agents"] or opts["advertise"]
        for key in ("advertise", "advertise_agents"):  # clients are redirected there: something they can dial
            try:
                parse_endpoint(opts[key])
            except ValueError as exc:
                raise i.error(key if i.data.get(key) else "advertise", str(exc)) from None

    if "http_events" in root.data:
        opts["http_events"] = HttpEventsConfig.from_section(root.section("http_events"))

    t = root.section("tls")
    for index, address in enumerate(t.data.get("client_cert_listen") or []):
        if isinstance(address, str):
            _listen_address(t, index, address, "client_cert_listen")
    opts["tls"] = TlsConfig.from_section(t, listen)
    # [controller.openstack]'s cloud serves [auth.keystone] too, unless it names its own (read, not consumed)
    auth = _auth(root.section("auth"), Section(sub.file, dict(sub.data), sub.prefix) if backend == "openstack" else None)
    policy = load_policy(policy_path) if policy_path else default_policy()
    root.done()
    # last: the backend may open files or pools, and nothing else can fail after it
    controller = None
    if build_controller:
        try:
            if backend == "embedded" and opts.get("etcd") is not None:
                cls = EtcdEmbeddedController  # one truth for every replica: its state in etcd
            controller = cls.from_config(sub)
        except (ValueError, OSError) as exc:
            raise ConfigError(root.file, f"controller.{backend}", str(exc)) from None
    return InspectorConfig(node_id=node_id, listen=tuple(listen), controller=controller, auth=auth,
                           policy=policy, bmcs=bmcs, path=str(path), **opts)

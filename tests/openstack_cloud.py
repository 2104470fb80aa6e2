"""A small, stateful OpenStack cloud on loopback for tests: Keystone v3, Nova and Neutron.

openstacksdk sends its real HTTP requests here; nothing of the SDK is mocked.
The server keeps state (services, servers, ports, migrations) because the SDK
legitimately skips PUTs of attributes it believes unchanged, and it records
every request (method, path, query, body, headers, client port) so tests can
assert the exact calls, microversion headers included.

    cloud = FakeCloud(compute_max="2.90")
    cloud.start()
    cloud.add_host("compute-1")
    cloud.add_server("s1", host="compute-1", project_id="p1", user_id="u1")
    cloud.add_port("port-1", host="compute-1", project_id="p1", device_id="s1")
    path = cloud.write_clouds_yaml(tmp_dir)        # cloud name "fake"
    ...
    [r for r in cloud.requests() if r.service == "compute"]
    cloud.stop()

Keystone issues tokens for users of its own (``add_user`` + ``POST /v3/auth/tokens``, or ``issue_token``
directly, as ``openstack token issue`` would), each scoped to a project with roles, and validates them as
Keystone does: ``GET /v3/auth/tokens`` with the caller's ``X-Auth-Token`` (the service account's, else 401)
and the ``X-Subject-Token`` to check -> 200 with the ``token`` body (user, project, roles, expires_at; the
catalog unless ``?nocatalog``), 404 for unknown, expired or revoked ones (``revoke_token``).

Behaviour modelled on Nova/Neutron (what the adapter relies on): microversion
negotiation (406 above the maximum; service ids are UUIDs from 2.53, integers
below; legacy ``/os-services/force-down`` etc. only below 2.53), host_status
from 2.16, ``all_tenants``/``host``/``project_id`` filters and pagination of
``/servers/detail``, os-resetState, os-migrateLive / evacuate / migrate with
Nova's preconditions (scheduling failures are synchronous 400s below 2.34 and
asynchronous migration errors from 2.34), ``/os-migrations``, Neutron
``binding:host_id`` filters and the ``data-plane-status`` extension.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

PASSWORD = "fake-cloud-password"  # test-only credential, written into the test's clouds.yaml
TOKEN = "gAAAAA-fake-token"
ADMIN_PROJECT = "admin-project"
TERMINAL_MIGRATION = ("completed", "done", "confirmed", "reverted", "error", "failed", "cancelled")


_VERSION_DOCS = ("/compute", "/compute/v2.1", "/network", "/network/v2.0")  # served without a token


def _mv(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # parsed JSON, or None
    headers: dict[str, str]  # keys lower-cased
    client_port: int
    status: int = 0
    request_id: str = ""  # the x-openstack-request-id of the answer
    raw: bytes = b""  # the body as sent

    @property
    def service(self) -> str:
        """identity, compute or network."""
        return self.path.split("/")[1]

    @property
    def microversion(self) -> str | None:
        """The compute microversion asked for in ``OpenStack-API-Version`` (None when absent)."""
        value = self.headers.get("openstack-api-version")
        return value.split()[1] if value else None


@dataclass
class Service:
    host: str
    int_id: int
    uuid: str
    zone: str = "nova"
    binary: str = "nova-compute"
    forced_down: bool = False
    disabled: bool = False
    disabled_reason: str | None = None
    alive: bool = True  # the service heartbeats

    @property
    def usable(self) -> bool:
        return self.alive and not self.forced_down and not self.disabled

    @property
    def host_status(self) -> str:
        if self.forced_down:
            return "DOWN"
        if self.disabled:
            return "MAINTENANCE"
        return "UP" if self.alive else "UNKNOWN"


@dataclass
class FakeServer:
    id: str
    name: str
    host: str
    project_id: str
    user_id: str
    vm_state: str = "active"
    status: str = "ACTIVE"
    task_state: str | None = None


@dataclass
class FakePort:
    id: str
    host: str
    project_id: str
    device_id: str = ""
    data_plane_status: str | None = None
    revision_number: int = 1


@dataclass
class Migration:
    id: int
    uuid: str
    server_id: str
    source: str
    dest: str | None
    status: str
    type: str


@dataclass(frozen=True)
class UserToken:
    user: str
    project_id: str | None
    roles: tuple[str, ...]
    expires_at: float  # unix seconds
    revoked: bool = False


class HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


def _nova_error(status: int, message: str) -> HttpError:
    kind = {400: "badRequest", 403: "forbidden", 404: "itemNotFound", 406: "notAcceptable", 409: "conflictingRequest"}
    return HttpError(status, {kind.get(status, "computeFault"): {"code": status, "message": message}})


def _neutron_error(status: int, kind: str, message: str) -> HttpError:
    return HttpError(status, {"NeutronError": {"type": kind, "message": message, "detail": ""}})


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    times: int
    status: int = 0  # answer with this status ...
    stall: "Stall | None" = None  # ... or hold the request first


@dataclass
class Stall:
    """A hung cloud: ``entered`` is set when a held request arrives; ``release()`` lets them all go."""

    seconds: float
    entered: threading.Event
    gate: threading.Event

    def release(self) -> None:
        self.gate.set()


class FakeCloud:
    """The cloud. Thread-safe: the HTTP server answers each connection on its own thread."""

    def __init__(self, *, compute_max: str = "2.90", data_plane_status: bool = True,
                 page_size: int = 1000, instant_migrations: bool = True,
                 tls: tuple[Path, Path] | None = None, client_ca: Path | None = None) -> None:
        self.compute_max = compute_max
        self.tls = tls              # (certificate, key): every endpoint over HTTPS
        self.client_ca = client_ca  # with tls: clients must present a certificate this CA signed
        self.data_plane_status = data_plane_status
        self.page_size = page_size  # Nova's osapi_max_limit
        # True: a migration finishes within the request; False: it stays "running" until complete_migrations()
        self.instant_migrations = instant_migrations
        self.latency_s = 0.0  # added to every Nova/Neutron request, outside the state lock
        self.network_url: str | None = None  # Neutron's endpoint in the catalog (default: this server's; "": none)
        self.token = TOKEN  # the service account's valid token; revoke_tokens() replaces it
        self._users: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {}  # name -> (password, project -> roles)
        self._user_tokens: dict[str, UserToken] = {}  # issued to users (not the service account)
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._servers: dict[str, FakeServer] = {}
        self._ports: dict[str, FakePort] = {}
        self._migrations: list[Migration] = []
        self._aggregates: list[dict[str, Any]] = []
        self._requests: list[Recorded] = []
        self._rules: list[_Rule] = []
        self._ids = itertools.count(1)
        self._in_flight = 0
        self.max_in_flight = 0
        self._stop = threading.Event()
        self._cond = threading.Condition(self._lock)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> "FakeCloud":
        handler = type("Handler", (_Handler,), {"cloud": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            if self.client_ca is not None:
                ctx.load_verify_locations(self.client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            # the handshake on each connection's first read, in its own thread: a stuck client holds no other
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                         name="fake-cloud", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close kept-alive connections and join every handler thread."""
        self._stop.set()  # releases stalled requests
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()  # joins handler threads (block_on_close)
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeCloud":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the cloud first"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def write_clouds_yaml(self, directory: Path, cloud: str = "fake", **extra: Any) -> Path:
        """A clouds.yaml for this cloud (JSON is valid YAML); ``extra`` keys go into the cloud's entry."""
        entry = {
            "auth_type": "password",
            "auth": {"auth_url": self.auth_url, "username": "doctor", "password": PASSWORD,
                     "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": "RegionOne",
            "identity_api_version": 3,
            **extra,
        }
        path = Path(directory) / "clouds.yaml"
        path.write_text(json.dumps({"clouds": {cloud: entry}}, indent=2))
        return path

    # -- seeding and state -----------------------------------------------------------------

    def add_host(self, name: str, *, zone: str = "nova", forced_down: bool = False, disabled: bool = False,
                 disabled_reason: str | None = None, alive: bool = True) -> None:
        with self._lock:
            self._services[name] = Service(name, next(self._ids), str(uuid.uuid4()), zone, "nova-compute",
                                           forced_down, disabled, disabled_reason, alive)

    def add_aggregate(self, name: str, hosts: list[str], metadata: dict[str, str] | None = None) -> None:
        """A Nova host aggregate (``GET /os-aggregates`` lists it)."""
        with self._lock:
            n = len(self._aggregates) + 1
            self._aggregates.append({"id": n, "uuid": str(uuid.uuid4()), "name": name, "availability_zone": None,
                                     "hosts": list(hosts), "metadata": dict(metadata or {}),
                                     "created_at": "2026-12-01T00:00:00.000000", "updated_at": None,
                                     "deleted_at": None, "deleted": False})

    def add_server(self, id: str, *, host: str, project_id: str, user_id: str = "", name: str | None = None,
                   status: str = "ACTIVE") -> None:
        vm_state = {"ACTIVE": "active", "ERROR": "error", "SHUTOFF": "stopped", "MIGRATING": "active"}[status]
        with self._lock:
            self._servers[id] = FakeServer(id, name if name is not None else id, host, project_id, user_id, vm_state,
                                           status, "migrating" if status == "MIGRATING" else None)

    def add_port(self, id: str, *, host: str, project_id: str, device_id: str = "") -> None:
        with self._lock:
            self._ports[id] = FakePort(id, host, project_id, device_id)

    def add_migration(self, server_id: str, source: str, dest: str | None, status: str = "running",
                      type: str = "live-migration") -> None:
        with self._lock:
            n = next(self._ids)
            self._migrations.append(Migration(n, str(uuid.uuid4()), server_id, source, dest, status, type))

    def set_max_microversion(self, version: str) -> None:
        self.compute_max = version

    def set_data_plane_status(self, enabled: bool) -> None:
        """Toggle Neutron's ``data-plane-status`` extension."""
        self.data_plane_status = enabled

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (as an expiry would): the next API call gets 401."""
        with self._lock:
            self.token = f"{TOKEN}-{uuid.uuid4().hex[:8]}"

    def add_user(self, name: str, password: str, projects: dict[str, tuple[str, ...]]) -> None:
        """A Keystone user with ``roles`` in each project (project ids double as names)."""
        with self._lock:
            self._users[name] = (password, dict(projects))

    def issue_token(self, user: str, project_id: str | None, roles: tuple[str, ...] = ("member",),
                    expires_in: float = 3600.0) -> str:
        """A token of ``user`` scoped to ``project_id`` (None: unscoped), as Keystone would issue one."""
        token = f"gAAAAA-user-{uuid.uuid4().hex}"
        with self._lock:
            self._user_tokens[token] = UserToken(user, project_id, tuple(roles), time.time() + expires_in)
        return token

    def revoke_token(self, token: str) -> None:
        """``openstack token revoke``: validating it answers 404 from now on."""
        with self._lock:
            self._user_tokens[token] = replace(self._user_tokens[token], revoked=True)

    def validations(self) -> list[Recorded]:
        """The token validations received (GET /v3/auth/tokens), in arrival order."""
        return [r for r in self.requests("identity") if r.method == "GET" and r.path == "/identity/v3/auth/tokens"]

    def set_host_alive(self, host: str, alive: bool) -> None:
        with self._lock:
            self._services[host].alive = alive

    def complete_migrations(self) -> int:
        """Finish every running migration (moving its server); returns how many."""
        with self._lock:
            running = [m for m in self._migrations if m.status not in TERMINAL_MIGRATION]
            for m in running:
                self._finish_move(m)
            return len(running)

    def fail_migrations(self) -> int:
        """Every running migration errors, as Nova reports one that failed after it was accepted: the server
        stays on its source, ACTIVE. Returns how many."""
        with self._lock:
            running = [m for m in self._migrations if m.status not in TERMINAL_MIGRATION]
            for m in running:
                m.status = "error"
                s = self._servers[m.server_id]
                s.status, s.vm_state, s.task_state = "ACTIVE", "active", None
            return len(running)

    def service(self, host: str) -> Service:
        with self._lock:
            return replace(self._services[host])

    def server(self, id: str) -> FakeServer:
        with self._lock:
            return replace(self._servers[id])

    def port(self, id: str) -> FakePort:
        with self._lock:
            return replace(self._ports[id])

    def migrations(self) -> list[Migration]:
        with self._lock:
            return [replace(m) for m in self._migrations]

    # -- requests and faults -----------------------------------------------------------------

    def requests(self, service: str | None = None) -> list[Recorded]:
        """Every request so far, in arrival order (of one service: identity, compute, network)."""
        with self._lock:
            return [r for r in self._requests if service is None or r.service == service]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def wait_for(self, predicate: Callable[[list[Recorded]], bool], timeout: float = 5.0) -> list[Recorded]:
        """Wait until ``predicate(requests)`` holds; raise TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the cloud did not receive the expected requests")
                self._cond.wait(left)
            return list(self._requests)

    def fail(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status`` (e.g. 503, 403)."""
        with self._lock:
            self._rules.append(_Rule(method, re.compile(path_regex), times, status=status))

    def clear_rules(self) -> None:
        """Forget every failure and stall still pending."""
        with self._lock:
            self._rules.clear()

    def stall(self, method: str, path_regex: str, seconds: float, times: int = 1) -> Stall:
        """Hold the next ``times`` matching requests for ``seconds``, or until released, or until stop()."""
        stall = Stall(seconds, threading.Event(), threading.Event())
        with self._lock:
            self._rules.append(_Rule(method, re.compile(path_regex), times, stall=stall))
        return stall

    @property
    def connections(self) -> set[int]:
        """Client ports seen: one per TCP connection the SDK opened."""
        with self._lock:
            return {r.client_port for r in self._requests}

    # -- request handling (called by the HTTP handler) -------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any,
                client_port: int, raw: bytes = b"") -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        rec = Recorded(method, path, query, body, headers, client_port, request_id=f"req-{uuid.uuid4()}", raw=raw)
        rule = self._take_rule(method, path)
        api = path.startswith(("/compute", "/network"))
        if api:
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if rule is not None and rule.stall is not None:
                rule.stall.entered.set()
                deadline = time.monotonic() + rule.stall.seconds
                while not (rule.stall.gate.is_set() or self._stop.is_set()) and time.monotonic() < deadline:
                    rule.stall.gate.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            if api and self.latency_s:
                self._stop.wait(self.latency_s)
            try:
                if rule is not None and rule.status:
                    raise HttpError(rule.status, {"error": {"code": rule.status, "message": "injected fault"}})
                if api and path not in _VERSION_DOCS and headers.get("x-auth-token") != self.token:
                    raise HttpError(401, {"error": {"code": 401, "message": "The request you have made requires authentication."}})
                with self._lock:
                    status, extra, out = self._route(method, path, query, headers, body)
            except HttpError as exc:
                status, extra, out = exc.status, {}, exc.body
        finally:
            with self._cond:
                if api:
                    self._in_flight -= 1
                self._requests.append(replace(rec, status=status))
                self._cond.notify_all()
        return status, {"x-openstack-request-id": rec.request_id, **extra}, out

    def _take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method == method and rule.times > 0 and rule.pattern.search(path):
                    rule.times -= 1
                    return rule
        return None

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: Any) -> tuple[int, dict[str, str], Any]:
        if path.startswith("/identity"):
            return self._identity(method, path, query, headers, body)
        if path.startswith("/compute"):
            mv = self._microversion(headers)
            status, out = self._compute(method, path.removeprefix("/compute"), query, body, mv)
            return status, {"OpenStack-API-Version": f"compute {mv[0]}.{mv[1]}"}, out
        if path.startswith("/network"):
            status, out = self._network(method, path.removeprefix("/network"), query, body)
            return status, {}, out
        raise HttpError(404, {"error": {"message": f"no route for {path}"}})

    # -- Keystone --------------------------------------------------------------------------

    def _identity(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
                  body: Any) -> tuple[int, dict[str, str], Any]:
        version = {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                   "links": [{"rel": "self", "href": f"{self.auth_url}/"}],
                   "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}
        if method == "GET" and path == "/identity":
            return 300, {}, {"versions": {"values": [version]}}
        if method == "GET" and path == "/identity/v3":
            return 200, {}, {"version": version}
        if method == "GET" and path == "/identity/v3/auth/tokens":
            return self._validate(headers, "nocatalog" in query)
        if method == "POST" and path == "/identity/v3/auth/tokens":
            try:
                user = body["auth"]["identity"]["password"]["user"]
                pw = user["password"]
            except (KeyError, TypeError):
                user, pw = {}, None
            if user.get("name") in self._users:
                return self._user_login(user, pw, body)
            if pw != PASSWORD:
                raise HttpError(401, {"error": {"code": 401, "message": "The request you have made requires authentication.",
                                                "title": "Unauthorized"}})
            return 201, {"X-Subject-Token": self.token}, {"token": self._token_body()}
        raise HttpError(404, {"error": {"code": 404, "message": f"no route for {path}"}})

    def _user_login(self, user: dict[str, Any], password: Any, body: Any) -> tuple[int, dict[str, str], Any]:
        known, projects = self._users[user["name"]]
        scope = (body["auth"].get("scope") or {}).get("project") or {}
        project = scope.get("id") or scope.get("name")
        if password != known or (project is not None and project not in projects):
            raise HttpError(401, {"error": {"code": 401, "title": "Unauthorized",
                                            "message": "The request you have made requires authentication."}})
        token = f"gAAAAA-user-{uuid.uuid4().hex}"
        self._user_tokens[token] = UserToken(user["name"], project, projects.get(project, ()) if project else (),
                                             time.time() + 3600)
        return 201, {"X-Subject-Token": token}, {"token": self._user_token_body(self._user_tokens[token], True)}

    def _validate(self, headers: dict[str, str], nocatalog: bool) -> tuple[int, dict[str, str], Any]:
        if headers.get("x-auth-token") != self.token:  # validating needs the service account's token
            raise HttpError(401, {"error": {"code": 401, "title": "Unauthorized",
                                            "message": "The request you have made requires authentication."}})
        subject = headers.get("x-subject-token", "")
        if subject == self.token:
            body = self._token_body()
            if nocatalog:
                del body["catalog"]
            return 200, {"X-Subject-Token": subject}, {"token": body}
        t = self._user_tokens.get(subject)
        if t is None or t.revoked or t.expires_at <= time.time():
            raise HttpError(404, {"error": {"code": 404, "title": "Not Found",
                                            "message": f"Could not find token: {subject[:12]}..."}})
        return 200, {"X-Subject-Token": subject}, {"token": self._user_token_body(t, not nocatalog)}

    def _user_token_body(self, t: "UserToken", catalog: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "methods": ["password"],
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t.expires_at))
                          + f".{int(t.expires_at % 1 * 1e6):06d}Z",
            "user": {"id": f"id-{t.user}", "name": t.user, "domain": {"id": "default", "name": "Default"}},
            "audit_ids": [uuid.uuid4().hex[:22]],
        }
        if t.project_id is not None:
            body["project"] = {"id": t.project_id, "name": t.project_id, "domain": {"id": "default", "name": "Default"}}
            body["roles"] = [{"id": f"r-{r}", "name": r} for r in t.roles]
        if catalog:
            body["catalog"] = self._token_body()["catalog"]
        return body

    def _token_body(self) -> dict[str, Any]:
        def endpoint(kind: str, name: str, url: str) -> dict[str, Any]:
            return {"type": kind, "name": name, "id": uuid.uuid4().hex,
                    "endpoints": [{"id": uuid.uuid4().hex, "interface": "public", "region": "RegionOne",
                                   "region_id": "RegionOne", "url": url}]}
        now = time.gmtime()
        return {
            "methods": ["password"],
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", now),
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() + 3600)),
            "user": {"id": "doctor-user", "name": "doctor", "domain": {"id": "default", "name": "Default"}},
            "project": {"id": ADMIN_PROJECT, "name": "admin", "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r-admin", "name": "admin"}],
            "catalog": [endpoint("identity", "keystone", f"{self.url}/identity"),
                        endpoint("compute", "nova", f"{self.url}/compute/v2.1"),
                        *([] if self.network_url == "" else
                          [endpoint("network", "neutron", self.network_url or f"{self.url}/network")])],
        }

    # -- Nova ------------------------------------------------------------------------------

    def _microversion(self, headers: dict[str, str]) -> tuple[int, int]:
        value = headers.get("openstack-api-version", "")
        asked = value.split()[1] if value.startswith("compute ") else headers.get("x-openstack-nova-api-version", "2.1")
        top = _mv(self.compute_max)
        mv = top if asked == "latest" else _mv(asked)
        if not (2, 1) <= mv <= top:
            raise _nova_error(406, f"Version {asked} is not supported by the API. Minimum is 2.1 and maximum is {self.compute_max}.")
        return mv

    def _compute(self, method: str, path: str, query: dict[str, list[str]], body: Any,
                 mv: tuple[int, int]) -> tuple[int, Any]:
        version = {"id": "v2.1", "status": "CURRENT", "version": self.compute_max, "min_version": "2.1",
                   "updated": "2013-07-23T11:33:21Z", "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/"}]}
        if path in ("", "/v2.1") and method == "GET":
            return (200, {"version": version}) if path else (300, {"versions": [version]})
        path = path.removeprefix("/v2.1")
        if path == "/os-services" and method == "GET":
            found = [s for s in self._services.values() if _match(query, "host", s.host) and _match(query, "binary", s.binary)]
            return 200, {"services": [self._service_view(s, mv) for s in found]}
        if path == "/os-aggregates" and method == "GET":
            return 200, {"aggregates": [dict(a) for a in self._aggregates]}
        if path.startswith("/os-services/") and method == "PUT":
            return 200, {"service": self._update_service(path.removeprefix("/os-services/"), body, mv)}
        if path == "/servers/detail" and method == "GET":
            return 200, self._list_servers(query, mv)
        m = re.fullmatch(r"/servers/([^/]+)", path)
        if m and method == "GET":
            return 200, {"server": self._server_view(self._get_server(m.group(1)), mv)}
        m = re.fullmatch(r"/servers/([^/]+)/action", path)
        if m and method == "POST":
            return self._server_action(self._get_server(m.group(1)), body, mv)
        if path == "/os-migrations" and method == "GET":
            found = [mig for mig in self._migrations
                     if (not query.get("host") or query["host"][0] in (mig.source, mig.dest))
                     and _match(query, "status", mig.status) and _match(query, "instance_uuid", mig.server_id)]
            return 200, {"migrations": [self._migration_view(mig, mv) for mig in found]}
        raise _nova_error(404, f"no route for {method} {path}")

    def _service_view(self, s: Service, mv: tuple[int, int]) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": s.uuid if mv >= (2, 53) else s.int_id, "binary": s.binary, "host": s.host, "zone": s.zone,
            "status": "disabled" if s.disabled else "enabled", "state": "up" if s.alive and not s.forced_down else "down",
            "updated_at": "2024-01-01T00:00:00.000000", "disabled_reason": s.disabled_reason,
        }
        if mv >= (2, 11):
            view["forced_down"] = s.forced_down
        return view

    def _update_service(self, what: str, body: Any, mv: tuple[int, int]) -> dict[str, Any]:
        if mv >= (2, 53):
            svc = next((s for s in self._services.values() if s.uuid == what), None)
            if svc is None:
                if not re.fullmatch(r"[0-9a-f-]{36}", what):
                    raise _nova_error(400, f"Invalid uuid {what}")
                raise _nova_error(404, f"Service {what} could not be found.")
            if not isinstance(body, dict) or not body or set(body) - {"status", "disabled_reason", "forced_down"}:
                raise _nova_error(400, f"Invalid input for field/attribute: {body!r}")
            if "disabled_reason" in body and body.get("status") != "disabled":
                raise _nova_error(400, "Specifying 'disabled_reason' with status 'enabled' is invalid.")
            if "status" in body:
                svc.disabled = body["status"] == "disabled"
                svc.disabled_reason = body.get("disabled_reason") if svc.disabled else None
            if "forced_down" in body:
                svc.forced_down = bool(body["forced_down"])
            return self._service_view(svc, mv)
        actions = {"enable", "disable", "disable-log-reason"} | ({"force-down"} if mv >= (2, 11) else set())
        if what not in actions:
            raise _nova_error(404, f"Unknown action {what}")
        if not isinstance(body, dict) or "host" not in body or "binary" not in body:
            raise _nova_error(400, "host and binary are required")
        svc = self._services.get(body["host"])
        if svc is None or svc.binary != body["binary"]:
            raise _nova_error(404, f"Host '{body['host']}' is not found.")
        out: dict[str, Any] = {"host": svc.host, "binary": svc.binary}
        if what == "force-down":
            if not isinstance(body.get("forced_down"), bool):
                raise _nova_error(400, "forced_down is required")
            svc.forced_down = body["forced_down"]
            out["forced_down"] = svc.forced_down
        elif what == "enable":
            svc.disabled, svc.disabled_reason = False, None
            out["status"] = "enabled"
        else:
            if what == "disable-log-reason" and not body.get("disabled_reason"):
                raise _nova_error(400, "disabled_reason is required")
            svc.disabled, svc.disabled_reason = True, body.get("disabled_reason")
            out.update(status="disabled", disabled_reason=svc.disabled_reason)
        return out

    def _get_server(self, id: str) -> FakeServer:
        server = self._servers.get(id)
        if server is None:
            raise _nova_error(404, f"Instance {id} could not be found.")
        return server

    def _server_view(self, s: FakeServer, mv: tuple[int, int]) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": s.id, "name": s.name, "status": s.status, "tenant_id": s.project_id, "user_id": s.user_id,
            "OS-EXT-SRV-ATTR:host": s.host, "OS-EXT-SRV-ATTR:hypervisor_hostname": s.host,
            "OS-EXT-STS:vm_state": s.vm_state, "OS-EXT-STS:task_state": s.task_state,
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/servers/{s.id}"}],
        }
        if mv >= (2, 16):
            svc = self._services.get(s.host)
            view["host_status"] = svc.host_status if svc else ""
        return view

    def _list_servers(self, query: dict[str, list[str]], mv: tuple[int, int]) -> dict[str, Any]:
        every = query.get("all_tenants", ["0"])[0].lower() in ("1", "true", "")
        found = [s for s in self._servers.values()
                 if (every or s.project_id == ADMIN_PROJECT) and _match(query, "host", s.host)
                 and _match(query, "project_id", s.project_id)]
        limit = min(int(query.get("limit", [str(self.page_size)])[0]), self.page_size)
        if "marker" in query:
            ids = [s.id for s in found]
            if query["marker"][0] not in ids:
                raise _nova_error(400, f"marker [{query['marker'][0]}] not found")
            found = found[ids.index(query["marker"][0]) + 1:]
        page = found[:limit]
        out: dict[str, Any] = {"servers": [self._server_view(s, mv) for s in page]}
        if len(page) == limit and page:
            nxt = {k: v[0] for k, v in query.items() if k != "marker"} | {"limit": str(limit), "marker": page[-1].id}
            out["servers_links"] = [{"rel": "next", "href": f"{self.url}/compute/v2.1/servers/detail?{urlencode(nxt)}"}]
        return out

    def _migration_view(self, m: Migration, mv: tuple[int, int]) -> dict[str, Any]:
        view: dict[str, Any] = {"id": m.id, "instance_uuid": m.server_id, "source_compute": m.source,
                                "dest_compute": m.dest, "status": m.status, "created_at": "2024-01-01T00:00:00.000000"}
        if mv >= (2, 23):
            view["migration_type"] = m.type
        if mv >= (2, 59):
            view["uuid"] = m.uuid
        return view

    def _server_action(self, s: FakeServer, body: Any, mv: tuple[int, int]) -> tuple[int, Any]:
        if not isinstance(body, dict) or len(body) != 1:
            raise _nova_error(400, "exactly one action expected")
        (action, args), = body.items()
        if action == "os-resetState":
            if not isinstance(args, dict) or args.get("state") not in ("active", "error") or len(args) != 1:
                raise _nova_error(400, f"Invalid input for field/attribute state: {args!r}")
            s.vm_state, s.status, s.task_state = args["state"], args["state"].upper(), None
            return 202, None
        if action in ("os-stop", "os-start"):
            if args is not None:
                raise _nova_error(400, f"Invalid input for {action}: {args!r}")
            want = "stopped" if action == "os-stop" else "active"
            if s.vm_state != ("active" if action == "os-stop" else "stopped"):
                raise _nova_error(409, f"Cannot '{action.removeprefix('os-')}' instance {s.id} while it is in "
                                       f"vm_state {s.vm_state}")
            s.vm_state, s.status, s.task_state = want, "SHUTOFF" if want == "stopped" else "ACTIVE", None
            return 202, None
        if action == "confirmResize":
            if args is not None:
                raise _nova_error(400, f"Invalid input for confirmResize: {args!r}")
            mig = next((m for m in reversed(self._migrations) if m.server_id == s.id and m.type == "migration"
                        and m.status == "finished"), None)
            if s.status != "VERIFY_RESIZE" or mig is None:
                raise _nova_error(409, f"Cannot 'confirmResize' instance {s.id} while it is in status {s.status}")
            s.status, mig.status = "ACTIVE", "confirmed"
            return 204, None
        if action == "os-migrateLive":
            allowed = {"host", "block_migration"} | ({"force"} if mv >= (2, 30) else set()) \
                | ({"disk_over_commit"} if mv < (2, 25) else set())
            if not isinstance(args, dict) or set(args) - allowed or "block_migration" not in args or \
                    (args["block_migration"] == "auto" and mv < (2, 25)) or (mv < (2, 25) and "disk_over_commit" not in args):
                raise _nova_error(400, f"Invalid input for os-migrateLive at {mv}: {args!r}")
            if s.vm_state != "active" or s.task_state is not None:
                raise _nova_error(409, f"Cannot 'os-migrateLive' instance {s.id} while it is in vm_state {s.vm_state}")
            return self._move(s, args.get("host"), "live-migration", mv, need_source_up=True)
        if action == "evacuate":
            allowed = {"host", "adminPass"} | ({"force"} if (2, 29) <= mv < (2, 68) else set()) \
                | ({"onSharedStorage"} if mv < (2, 14) else set())
            if not isinstance(args, dict) or set(args) - allowed or (mv < (2, 14) and "onSharedStorage" not in args):
                raise _nova_error(400, f"Invalid input for evacuate at {mv}: {args!r}")
            return self._move(s, args.get("host"), "evacuation", mv, need_source_up=False)
        if action == "migrate":
            target = args.get("host") if isinstance(args, dict) else None
            if args is not None and (not isinstance(args, dict) or mv < (2, 56) or set(args) - {"host"}):
                raise _nova_error(400, f"Invalid input for migrate at {mv}: {args!r}")
            if s.vm_state not in ("active", "stopped") or s.task_state is not None:
                raise _nova_error(409, f"Cannot 'migrate' instance {s.id} while it is in vm_state {s.vm_state}")
            return self._move(s, target, "migration", mv, need_source_up=True)
        raise _nova_error(400, f"Unknown action {action}")

    def _move(self, s: FakeServer, target: str | None, kind: str, mv: tuple[int, int],
              need_source_up: bool) -> tuple[int, Any]:
        source = self._services[s.host]
        if need_source_up and not (source.alive and not source.forced_down):
            message = f"Compute service of {s.host} is unavailable at this time."
            if kind == "migration":
                raise _nova_error(409, message)
            if mv < (2, 34):
                raise _nova_error(400, message)
        if kind == "evacuation" and source.alive and not source.forced_down:
            raise _nova_error(400, f"Compute service of {s.host} is still in use.")
        problem = None
        if target is not None:
            dest = self._services.get(target)
            if dest is None:
                if kind == "evacuation":
                    raise _nova_error(404, f"Compute host {target} not found.")
                problem = f"Compute host {target} could not be found."
            elif target == s.host:
                raise _nova_error(400, "The target host can't be the same one.")
            elif not dest.usable:
                problem = f"No valid host was found. Host {target} is not usable."
        else:
            # the scheduler: the least loaded usable host other than the source
            load = {h: 0 for h, svc in self._services.items() if svc.usable and h != s.host}
            for other in self._servers.values():
                if other.host in load:
                    load[other.host] += 1
            target = min(load, key=lambda h: (load[h], h)) if load else None
            if target is None:
                problem = "No valid host was found. There are not enough hosts available."
        if need_source_up and not (source.alive and not source.forced_down):
            problem = f"Compute service of {s.host} is unavailable at this time."
        mig = Migration(next(self._ids), str(uuid.uuid4()), s.id, s.host, target, "running", kind)
        if problem is not None:
            # live migration checks are synchronous before 2.34, a cold migration's always;
            # otherwise Nova accepts, then the migration errors (an evacuation errors the server too)
            if kind == "migration" or kind == "live-migration" and mv < (2, 34):
                raise _nova_error(400, problem)
            mig.status = "error"
            self._migrations.append(mig)
            if kind == "evacuation":
                s.vm_state, s.status, s.task_state = "error", "ERROR", None
                return 200, {}
            return 202, None
        self._migrations.append(mig)
        s.task_state = {"live-migration": "migrating", "migration": "resize_prep", "evacuation": "rebuilding"}[kind]
        s.status = {"live-migration": "MIGRATING", "migration": "RESIZE", "evacuation": "REBUILD"}[kind]
        if kind == "evacuation":
            mig.status = "accepted"
        if self.instant_migrations:
            self._finish_move(mig, stopped=kind == "evacuation" and mv >= (2, 95))
        return (200, {}) if kind == "evacuation" else (202, None)

    def _finish_move(self, mig: Migration, stopped: bool = False) -> None:
        s = self._servers[mig.server_id]
        assert mig.dest is not None
        s.host = mig.dest
        for p in self._ports.values():
            if p.device_id == s.id:
                p.host = mig.dest  # Nova rebinds the server's ports
        s.task_state = None
        if mig.type == "migration":
            s.status, mig.status = "VERIFY_RESIZE", "finished"  # waits for confirmResize
        else:
            s.status, s.vm_state = ("SHUTOFF", "stopped") if stopped else ("ACTIVE", "active")
            mig.status = "done" if mig.type == "evacuation" else "completed"

    # -- Neutron ---------------------------------------------------------------------------

    def _network(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if path == "" and method == "GET":
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"rel": "self", "href": f"{self.url}/network/v2.0/"}]}]}
        path = path.removeprefix("/v2.0")
        if path == "" and method == "GET":
            return 200, {"resources": []}
        extensions = [{"alias": "binding", "name": "Port Binding", "description": "", "links": [], "updated": ""}]
        if self.data_plane_status:
            extensions.append({"alias": "data-plane-status", "name": "Port data plane status extension",
                               "description": "", "links": [], "updated": "2017-04-24T09:00:00-00:00"})
        if path == "/extensions" and method == "GET":
            return 200, {"extensions": extensions}
        m = re.fullmatch(r"/extensions/([^/]+)", path)
        if m and method == "GET":
            ext = next((e for e in extensions if e["alias"] == m.group(1)), None)
            if ext is None:
                raise _neutron_error(404, "ExtensionNotFound", f"Extension {m.group(1)} could not be found.")
            return 200, {"extension": ext}
        if path == "/ports" and method == "GET":
            found = [p for p in self._ports.values() if _match(query, "binding:host_id", p.host)
                     and _match(query, "device_id", p.device_id) and _match(query, "project_id", p.project_id)]
            return 200, {"ports": [self._port_view(p) for p in found]}
        m = re.fullmatch(r"/ports/([^/]+)", path)
        if m and method in ("GET", "PUT"):
            port = self._ports.get(m.group(1))
            if port is None:
                raise _neutron_error(404, "PortNotFound", f"Port {m.group(1)} could not be found.")
            if method == "PUT":
                self._update_port(port, body)
            return 200, {"port": self._port_view(port)}
        raise _neutron_error(404, "HTTPNotFound", f"no route for {method} {path}")

    def _update_port(self, port: FakePort, body: Any) -> None:
        changes = body.get("port") if isinstance(body, dict) else None
        if not isinstance(changes, dict):
            raise _neutron_error(400, "HTTPBadRequest", "Resource body required")
        unknown = set(changes) - {"name", "description"} - ({"data_plane_status"} if self.data_plane_status else set())
        if unknown:
            raise _neutron_error(400, "HTTPBadRequest", f"Unrecognized attribute(s) '{', '.join(sorted(unknown))}'")
        if "data_plane_status" in changes:
            if changes["data_plane_status"] not in (None, "ACTIVE", "DOWN"):
                raise _neutron_error(400, "HTTPBadRequest", f"Invalid input for data_plane_status: {changes['data_plane_status']!r}")
            port.data_plane_status = changes["data_plane_status"]
        port.revision_number += 1

    def _port_view(self, p: FakePort) -> dict[str, Any]:
        view: dict[str, Any] = {"id": p.id, "name": "", "project_id": p.project_id, "tenant_id": p.project_id,
                                "device_id": p.device_id, "device_owner": "compute:nova" if p.device_id else "",
                                "binding:host_id": p.host, "status": "ACTIVE", "admin_state_up": True,
                                "revision_number": p.revision_number}
        if self.data_plane_status:
            view["data_plane_status"] = p.data_plane_status
        return view


def _match(query: dict[str, list[str]], key: str, value: str) -> bool:
    return key not in query or query[key][0] == value


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    request_queue_size = 256  # listen backlog: socketserver's 5 drops a burst of new connections (1 s SYN retries)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (timeout tests) leaves a broken pipe: expected, not worth a traceback
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End kept-alive connections so their handler threads return."""
        with self._open_lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    cloud: FakeCloud
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses its connections
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for the client's delayed ACK
    timeout = 30  # an idle kept-alive connection is closed after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, out = self.cloud._handle(self.command, self.path, headers, body, self.client_address[1], raw)
        data = b"" if out is None else json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


def main(argv: list[str] | None = None) -> None:
    """Serve a cloud in its own process (benchmarks, demos) until stdin closes; print its stats at the end."""
    import argparse

    ap = argparse.ArgumentParser(description="A fake OpenStack cloud on 127.0.0.1 (tests, benchmarks, demos)")
    ap.add_argument("--dir", required=True, help="directory for clouds.yaml (cloud name: fake)")
    ap.add_argument("--compute-max", default="2.90")
    ap.add_argument("--hosts", type=int, default=3, help="hosts c1..cN")
    ap.add_argument("--servers", type=int, default=0, help="servers s0.. on c1, with one port each")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="added to every Nova/Neutron request")
    ap.add_argument("--seed", help='JSON file: {"hosts": [{"name", "zone"}], "servers": [{"id", "host", '
                                   '"project_id"}], "ports": [{"id", "host", "project_id", "device_id"}]} '
                                   "instead of --hosts/--servers")
    args = ap.parse_args(argv)
    cloud = FakeCloud(compute_max=args.compute_max).start()
    try:
        if args.seed:
            seed = json.loads(Path(args.seed).read_text())
            for h in seed.get("hosts", []):
                cloud.add_host(h["name"], zone=h.get("zone", "nova"))
            for sv in seed.get("servers", []):
                cloud.add_server(sv["id"], host=sv["host"], project_id=sv["project_id"], user_id=sv.get("user_id", ""))
            for p in seed.get("ports", []):
                cloud.add_port(p["id"], host=p["host"], project_id=p["project_id"], device_id=p.get("device_id", ""))
        else:
            for i in range(1, args.hosts + 1):
                cloud.add_host(f"c{i}")
            for i in range(args.servers):
                cloud.add_server(f"s{i}", host="c1", project_id="p1", user_id="u1")
                cloud.add_port(f"port-{i}", host="c1", project_id="p1", device_id=f"s{i}")
        cloud.latency_s = args.latency_ms / 1000
        path = cloud.write_clouds_yaml(Path(args.dir))
        print(json.dumps({"url": cloud.url, "clouds_yaml": str(path)}), flush=True)
        sys.stdin.read()
        print(json.dumps({"requests": len(cloud.requests()), "max_in_flight": cloud.max_in_flight,
                          "connections": len(cloud.connections)}), flush=True)
    finally:
        cloud.stop()


if __name__ == "__main__":
    main()


__all__ = ["ADMIN_PROJECT", "FakeCloud", "FakePort", "FakeServer", "Migration", "Recorded", "Service", "Stall"]

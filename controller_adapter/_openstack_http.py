"""The fault path's writes as raw HTTP from the event loop: force-down, os-resetState, data_plane_status.

After a fence, dozens of calls must leave at once. Through openstacksdk each
one costs 4–5 ms of client CPU in its resource layer, in a worker thread,
under the GIL (``../shared/notes/openstack.md``): 50 resets queue behind
each other. Here each is one aiohttp request on the event loop (≈ 0.2 ms of
CPU), up to ``max_in_flight`` at once over pooled keep-alive connections.

The requests are the SDK's, byte for byte where it matters: method, URL,
JSON body (``json.dumps`` as requests does), ``X-Auth-Token``, ``Accept``,
the compute microversion the SDK would negotiate for the resource
(``OpenStack-API-Version`` and ``X-OpenStack-Nova-API-Version``), and the
SDK's User-Agent after ``nfv-doctor`` (``test_openstack_same_requests``). The token, the endpoints and the
microversions come from the SDK's own connection (keystoneauth), read in a
worker thread: once, again in the background when the token nears its expiry
(as keystoneauth renews it), and at once when a token is refused (401:
re-authenticate, then one retry). TLS as the SDK's session has it: its CA
bundle (``cacert``), or requests' own (``REQUESTS_CA_BUNDLE``, certifi),
``verify: false``, a client certificate (``cert``/``key``); and the proxies
of the environment (``HTTPS_PROXY``, ``NO_PROXY``), as requests honours
them. Errors map as ``_openstack_errors`` maps the SDK's: 404
NotFound, 502–504 and connection failures BackendUnavailable (retried for
these absolute-state writes), 403 naming the policy rule, anything else a
ControllerError with the status and the request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from controller_adapter._openstack_errors import http_error
from controller_adapter.base import BackendUnavailable, ControllerError

log = logging.getLogger("doctor.controller.openstack")


@dataclass(frozen=True)
class Endpoints:
    """What a request needs of the SDK's connection (read in a worker thread)."""

    token: str
    compute: str                 # the compute endpoint, e.g. https://nova:8774/v2.1
    server_microversion: str     # the SDK's for Server (capped at 2.100), e.g. "2.90"
    service_microversion: str    # the SDK's for Service (capped at 2.69)
    compute_max: tuple[int, int]  # the cloud's highest compute microversion
    user_agent: str
    expires_at: float = 0.0      # the token's expiry (unix seconds); 0: none known
    verify: bool | str = True    # the SDK session's: verify against requests' CA bundle, not at all, or this one
    cert: str | tuple[str, str] | None = None  # the SDK session's client certificate (and key)


# renewed in the background this long before the token expires: keystoneauth, asked, gives a new one once less
# than 120 s remain (before that it hands the same one back)
RENEW_BEFORE_S = 110.0
RENEW_EVERY_S = 30.0  # at most this often, whatever the token says


def ssl_context(verify: bool | str, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    """The TLS settings the SDK's session (requests) would use: ``verify`` True is requests' own bundle (the
    environment's ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else certifi's), a path is that bundle (file)
    or directory, False checks nothing; ``cert`` a client certificate file, or (certificate, key)."""
    if verify is True:
        import certifi  # requests' own bundle (requests depends on it)

        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif os.path.isdir(verify):
        ctx = ssl.create_default_context(capath=verify)
    else:
        ctx = ssl.create_default_context(cafile=verify)
    if cert:
        certfile, keyfile = cert if isinstance(cert, tuple) else (cert, None)
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def sdk_user_agent(session: Any) -> str:
    """The User-Agent keystoneauth sends for the SDK (its session's, else built as keystoneauth builds it)."""
    if session.user_agent:
        return str(session.user_agent)
    from keystoneauth1.session import DEFAULT_USER_AGENT

    agent = [f"{session.app_name}/{session.app_version}" if session.app_version else session.app_name] \
        if session.app_name else []
    agent += [f"{name}/{version}" for name, version in session.additional_user_agent]
    return " ".join([*agent, DEFAULT_USER_AGENT])


def _expiry(conn: Any) -> float:
    """The token's expiry as keystoneauth holds it (unix seconds), 0 when the plugin has none."""
    auth_ref = getattr(getattr(conn.session, "auth", None), "auth_ref", None)
    expires = getattr(auth_ref, "expires", None)
    return expires.timestamp() if isinstance(expires, datetime) else 0.0


def read_endpoints(conn: Any, reauthenticate: bool) -> Endpoints:
    """In a worker thread: the token (authenticating again if asked), compute endpoint and microversions, as the
    SDK has them. Neutron's endpoint is read apart (``network_endpoint``): a Neutron that does not answer must
    not hold Nova's calls."""
    from openstack.compute.v2.server import Server
    from openstack.compute.v2.service import Service

    from controller_adapter._openstack_sdk import compute_version

    if reauthenticate:
        conn.session.invalidate()
    compute = conn.compute
    major, _, minor = compute_version(conn).partition(".")
    token = conn.session.get_token()  # keystoneauth's, renewed by it when near its expiry
    cert = conn.session.cert
    return Endpoints(
        token=token, compute=compute.get_endpoint().rstrip("/"),
        server_microversion=Server._get_microversion(compute) or "",
        service_microversion=Service._get_microversion(compute) or "",
        compute_max=(int(major or 2), int(minor or 0)),
        user_agent=f"nfv-doctor {sdk_user_agent(conn.session)}",
        expires_at=_expiry(conn), verify=conn.session.verify,
        cert=tuple(cert) if isinstance(cert, (list, tuple)) else cert)


class HttpPath:
    def __init__(self, refresh: Callable[[bool], Awaitable[Endpoints]], network: Callable[[], Awaitable[str]],
                 timeout_s: float, max_in_flight: int, retries: int) -> None:
        self._refresh = refresh          # (reauthenticate) -> Endpoints, through the SDK in a worker thread
        self._read_network = network     # -> Neutron's endpoint, discovered by the SDK (its failures remembered)
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: Endpoints | None = None
        self._network = ""
        self._lock = asyncio.Lock()
        self._network_lock = asyncio.Lock()
        self._proxies: dict[str, str | None] = {}  # endpoint -> the proxy requests would use for it
        self._renewing: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self.renewals = 0  # background renewals begun (tests, Diagnostics)

    async def endpoints(self, reauthenticate: bool = False, stale: Endpoints | None = None) -> Endpoints:
        """The endpoints and token to send with. ``reauthenticate`` with the ``stale`` ones a request was refused
        with: authenticate again, unless another call already did (the token changed since)."""
        ep = self._endpoints
        if ep is not None and not reauthenticate:
            if not ep.expires_at or time.time() < ep.expires_at - RENEW_BEFORE_S:
                return ep  # no lock: a renewal running behind never holds a fault's calls
            if time.time() < ep.expires_at - 5.0:
                self._renew_soon()  # still good for a while: renewed behind this call, not before it
                return ep
            reauthenticate, stale = True, ep  # (nearly) expired: no request with it, wait for the new one
        async with self._lock:  # one refresh at a time; the calls that saw the same refused token share it
            current = self._endpoints
            if current is None or (reauthenticate and stale is not None and current.token == stale.token):
                self._endpoints = await self._refresh(reauthenticate)
            return self._endpoints

    def _renew_soon(self) -> None:
        now = time.monotonic()
        if (self._renewing is not None and not self._renewing.done()) or now - self._renewed_at < RENEW_EVERY_S:
            return
        self._renewed_at = now
        self.renewals += 1
        self._renewing = asyncio.create_task(self._renew(), name="openstack token renewal")

    async def _renew(self) -> None:
        started = self._endpoints
        try:
            fresh = await self._refresh(False)  # keystoneauth re-authenticates near the expiry; outside the lock
        except Exception as exc:  # noqa: BLE001 - the current token still serves; the next call tries again
            log.warning("renewing the OpenStack token failed (the current one serves until it expires): %s", exc)
            return
        if self._endpoints is started:  # not replaced meanwhile (a re-authentication after a 401 is newer)
            self._endpoints = fresh

    async def network_endpoint(self) -> str:
        async with self._network_lock:
            if not self._network:
                self._network = (await self._read_network()).rstrip("/")
            return self._network

    def _client(self, ep: Endpoints) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=self.max_in_flight,
                                               ssl=ssl_context(ep.verify, ep.cert)),
                # per connect and per read, not in total: a request queued behind max_in_flight others is not late
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
                json_serialize=json.dumps)
        return self._session

    async def warm(self) -> None:
        """Read the endpoints and set up the HTTP client (TLS context included) now, not at the first fault."""
        ep = await self.endpoints()
        self._client(ep)
        self._proxy(ep.compute)

    def _proxy(self, base: str) -> str | None:
        """The proxy requests (the SDK) would take for ``base`` from the environment (``HTTPS_PROXY``,
        ``NO_PROXY``...), found once per endpoint: aiohttp's own ``trust_env`` looks again at every request
        (0.8 ms of CPU each, measured: 50 resets paid 40 ms for it)."""
        if base not in self._proxies:
            from requests.utils import get_environ_proxies, select_proxy

            self._proxies[base] = select_proxy(base, get_environ_proxies(base))
        return self._proxies[base]

    async def call(self, what: str, method: str, service: str, path: str, body: Any, *,
                   microversion: str = "", policy: str | None = None, accept: str = "*/*") -> None:
        """One request; retried on BackendUnavailable (these are writes of absolute state), re-authenticated
        once on 401. ``microversion``: the resource whose SDK microversion to send ("server", "service");
        ``accept``: the SDK's Accept header for it (requests' ``*/*``; empty for a server action)."""
        attempts = 1 + self.retries
        for attempt in range(1, attempts + 1):
            try:
                await self._once(what, method, service, path, body, microversion, policy, accept)
                return
            except BackendUnavailable as exc:
                if attempt == attempts:
                    raise
                log.warning("%s (attempt %d of %d, retrying)", exc, attempt, attempts)
                await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))

    async def _once(self, what: str, method: str, service: str, path: str, body: Any, microversion: str,
                    policy: str | None, accept: str) -> None:
        ep = await self.endpoints()
        base = ep.compute if service == "compute" else await self.network_endpoint()
        for auth_attempt in (1, 2):
            headers = {"X-Auth-Token": ep.token, "Accept": accept, "User-Agent": ep.user_agent}
            mv = getattr(ep, f"{microversion}_microversion") if microversion else ""
            if mv:
                headers["OpenStack-API-Version"] = f"compute {mv}"
                headers["X-OpenStack-Nova-API-Version"] = mv
            if service == "compute":
                base = ep.compute
            try:
                client = self._client(ep)
            except (OSError, ssl.SSLError) as exc:
                raise ControllerError(f"{what}: the TLS settings of clouds.yaml (cacert, cert, key) cannot be used: "
                                      f"{exc}") from exc
            try:
                async with client.request(method, base + path, json=body, headers=headers,
                                          proxy=self._proxy(base)) as resp:
                    if resp.status == 401 and auth_attempt == 1:
                        ep = await self.endpoints(reauthenticate=True, stale=ep)
                        continue
                    if resp.status < 400:
                        return
                    raise http_error(what, policy, resp.status, _request_id(resp.headers), await _detail(resp))
            except aiohttp.ClientConnectorCertificateError as exc:  # not transient: no retry
                raise ControllerError(f"{what}: the cloud's TLS certificate is not trusted ({exc.certificate_error}): "
                                      "check clouds.yaml's cacert (or verify)") from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
                raise BackendUnavailable(f"{what}: cannot reach the cloud: {exc or type(exc).__name__}") from exc
            except (aiohttp.ClientError, ValueError) as exc:  # a bad URL, an undecodable answer
                raise ControllerError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _request_id(headers: Any) -> str | None:
    return headers.get("x-openstack-request-id") or headers.get("x-compute-request-id")


async def _detail(resp: aiohttp.ClientResponse) -> str:
    """Nova's and Neutron's error bodies: {"<kind>": {"message": ...}} / {"NeutronError": {"message": ...}}."""
    text = await resp.text()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            for v in doc.values():
                if isinstance(v, dict) and v.get("message"):
                    return str(v["message"])
    except ValueError:
        pass
    return text[:300] or f"HTTP {resp.status}"

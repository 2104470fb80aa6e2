"""Consumers' Keystone tokens: validated by Keystone, cached for a bounded time, one request per new token.

    token -> sha256 -> fresh cache entry: its answer
                    -> a validation of the same token under way: wait for it (single-flight)
                    -> otherwise GET /v3/auth/tokens?nocatalog (X-Subject-Token) on a worker thread, with the
                       inspector's own service credentials (a cloud of clouds.yaml, as the OpenStack controller)

A positive answer is trusted for ``cache_s`` and never past the token's ``expires_at``; a negative one (404:
unknown, expired or revoked) for ``negative_cache_s``, so a flood of bad tokens costs Keystone one request per
distinct token per that time. At most ``cache_size`` entries are kept (least recently used leave first), at most
``max_in_flight`` validations run at once, and at most ``32 * max_in_flight`` wait.

Errors::

    KeystoneUnavailable   Keystone unreachable or failing (5xx, timeout), the inspector's own credentials
                          refused (401/403 on validation), or too many validations waiting
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doctor_common.extras import OPENSTACK, missing

log = logging.getLogger("doctor.auth.keystone")


class KeystoneUnavailable(Exception):
    """Keystone could not say whether a token is valid (not: the token is invalid)."""


@dataclass(frozen=True)
class KeystoneSettings:
    """The ``[auth.keystone]`` table (cloud and clouds_yaml default to ``[controller.openstack]``'s)."""

    cloud: str | None = None          # a cloud of clouds.yaml; None: OS_CLOUD, or the only cloud there
    clouds_yaml: Path | None = None   # None: the SDK's search path (./, ~/.config/openstack, /etc/openstack)
    timeout_s: float = 5.0
    cache_s: float = 60.0
    negative_cache_s: float = 5.0
    cache_size: int = 10_000
    max_in_flight: int = 4
    admin_roles: tuple[str, ...] = ("admin",)

    @property
    def source(self) -> tuple[str | None, Path | None]:
        """Which Keystone, as whom: cache entries are only good for the same source."""
        return self.cloud, self.clouds_yaml


@dataclass(frozen=True)
class TokenInfo:
    """What Keystone said of a valid token."""

    user_id: str
    user_name: str
    project_id: str | None            # None: not project-scoped (domain, system or unscoped)
    project_name: str
    roles: frozenset[str]             # lower case
    expires_at: float                 # unix seconds


@dataclass
class _Entry:
    info: TokenInfo | None            # None: Keystone said no
    until: float                      # monotonic: trusted until then
    token: str = ""                   # a valid one, kept to check the streams opened with it again


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def open_session(settings: KeystoneSettings) -> tuple[Any, str]:
    """A keystoneauth Session with the cloud's credentials and timeout, and the identity interface to use.
    Blocking (reads clouds.yaml; imports openstacksdk's config loader)."""
    from openstack.config import loader

    files = [str(settings.clouds_yaml)] if settings.clouds_yaml else None
    config = loader.OpenStackConfig(config_files=files) if files else loader.OpenStackConfig()
    region = config.get_one(cloud=settings.cloud, api_timeout=settings.timeout_s)
    return region.get_session(), region.get_interface("identity") or "public"


def check_cloud(settings: KeystoneSettings) -> None:
    """Raise ValueError when clouds.yaml has no such cloud (no network: only the files are read)."""
    why = missing("openstack", OPENSTACK)
    if why:
        raise ValueError(f"Keystone tokens {why}")
    try:
        open_session(settings)
    except Exception as exc:  # noqa: BLE001 - openstacksdk's and keystoneauth's config errors share no base
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def validate_blocking(session: Any, interface: str, token: str) -> TokenInfo | None:
    """GET /v3/auth/tokens for ``token``: its info, None when Keystone does not know it (404)."""
    from keystoneauth1 import access
    from keystoneauth1 import exceptions as ka

    try:
        resp = session.get("/auth/tokens?nocatalog", headers={"X-Subject-Token": token}, raise_exc=False,
                           endpoint_filter={"service_type": "identity", "interface": interface, "version": (3, 0)},
                           connect_retries=0)
    except ka.ClientException as exc:  # connection refused, timeout, discovery, our own login refused
        raise KeystoneUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if resp.status_code == 404:
        return None
    if resp.status_code in (401, 403):
        raise KeystoneUnavailable(f"Keystone refused the inspector's own credentials for token validation (HTTP "
                                  f"{resp.status_code}): give its account the service (or admin) role")
    if resp.status_code != 200:
        raise KeystoneUnavailable(f"Keystone answered HTTP {resp.status_code} to a token validation")
    try:
        info = access.create(body=resp.json(), auth_token=token)
        expires = info.expires
        roles = frozenset(r.lower() for r in (info.role_names or ()))
        return TokenInfo(user_id=info.user_id or "", user_name=info.username or info.user_id or "",
                         project_id=info.project_id if info.project_scoped else None,
                         project_name=info.project_name or info.project_id or "", roles=roles,
                         expires_at=expires.timestamp())
    except Exception as exc:  # noqa: BLE001 - a body we cannot read says nothing either way
        raise KeystoneUnavailable(f"Keystone's token validation answer could not be read: {exc}") from exc


class KeystoneValidator:
    """The cache, the single-flight table and the worker threads in front of ``validate_blocking``."""

    def __init__(self, settings: KeystoneSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[TokenInfo | None]] = {}
        self._pool: ThreadPoolExecutor | None = None  # made on first use: a config that is only checked costs none
        self._session: tuple[Any, str] | None = None
        self._session_lock = threading.Lock()
        self.requests = 0  # validations sent to Keystone

    @property
    def max_pending(self) -> int:
        return 32 * self.settings.max_in_flight

    def reconfigure(self, settings: KeystoneSettings) -> None:
        """A reload with the same source: new cache times and roles; what was learnt is kept."""
        assert settings.source == self.settings.source
        self.settings = settings
        self._trim()

    def last_known(self, token_digest: bytes) -> TokenInfo | None | bool:
        """What Keystone last said of the token, however long ago; False when nothing is remembered."""
        entry = self._cache.get(token_digest)
        return False if entry is None else entry.info

    def token_of(self, token_digest: bytes) -> str | None:
        """The token behind a digest, while Keystone's last word on it was "valid" and it is remembered."""
        entry = self._cache.get(token_digest)
        return entry.token if entry is not None and entry.info is not None else None

    async def validate(self, token: str, token_digest: bytes | None = None) -> TokenInfo | None:
        """The token's info, None when it is not valid; KeystoneUnavailable when Keystone cannot tell."""
        key = token_digest if token_digest is not None else digest(token)
        entry = self._cache.get(key)
        if entry is not None and time.monotonic() < entry.until:
            self._cache.move_to_end(key)
            info = entry.info
            return info if info is None or info.expires_at > time.time() else None
        task = self._inflight.get(key)
        if task is None:
            if len(self._inflight) >= self.max_pending:
                raise KeystoneUnavailable(f"{len(self._inflight)} token validations are already waiting for "
                                          "Keystone: try again shortly")
            task = asyncio.get_running_loop().create_task(self._fetch(token, key), name="keystone validate")
            task.add_done_callback(_retrieve)
            self._inflight[key] = task
        return await asyncio.shield(task)  # a caller that gives up does not cancel the others' answer

    async def _fetch(self, token: str, key: bytes) -> TokenInfo | None:
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.max_in_flight, thread_name_prefix="keystone")
            self.requests += 1
            started = time.monotonic()
            info = await asyncio.get_running_loop().run_in_executor(self._pool, self._blocking, token)
            log.debug("token validated in %.1f ms: %s", (time.monotonic() - started) * 1000,
                      "valid" if info else "not valid")
            self._store(key, info, token)
            return info
        finally:
            self._inflight.pop(key, None)

    def _blocking(self, token: str) -> TokenInfo | None:
        with self._session_lock:
            if self._session is None:
                try:
                    self._session = open_session(self.settings)
                except Exception as exc:  # noqa: BLE001 - clouds.yaml changed under us, or the like
                    raise KeystoneUnavailable(f"cannot set up the Keystone session: {exc}") from exc
            session, interface = self._session
        return validate_blocking(session, interface, token)

    def _store(self, key: bytes, info: TokenInfo | None, token: str) -> None:
        now = time.monotonic()
        s = self.settings
        if info is not None:
            left = info.expires_at - time.time()
            until = now + min(s.cache_s, left) if left > 0 else now + s.negative_cache_s
        else:
            until = now + s.negative_cache_s
        self._cache[key] = _Entry(info, until, token if info is not None else "")
        self._cache.move_to_end(key)
        self._trim()

    def _trim(self) -> None:
        while len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)

    def cache_len(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # validations under way finish (their callers get an answer)
            self._pool = None
        with self._session_lock:
            if self._session is not None:
                session = self._session[0]
                self._session = None
                try:
                    session.session.close()  # the pooled keep-alive connections of requests
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Every waiter may have given up: mark the task's error as seen, or asyncio logs it as never retrieved."""
    if not task.cancelled():
        task.exception()

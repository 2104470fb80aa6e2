"""The ``[etcd]`` table of a daemon's TOML file, and the aetcd client built from it.

```toml
[etcd]
endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
prefix = "/nfv-doctor/site-a"     # several clusters can share one etcd
lease_ttl_s = 2                   # etcd may grant more; the granted TTL is used
step_down_margin_s = 0.2          # a leader steps down this long before its lease could expire
call_timeout_s = 2.5              # deadline of one etcd call: > etcd's raft election stall (~1.6 s)
write_deadline_s = 6.0            # a guarded write retries transient failures this long
ca_file = "/etc/nfv-doctor/etcd-ca.pem"
cert_file = "/etc/nfv-doctor/etcd-client.pem"
key_file = "/etc/nfv-doctor/etcd-client.key"
username = "doctor"
password_file = "/etc/nfv-doctor/etcd-password"   # or password = "..."; never a command-line flag
```

aetcd's own client dials one plaintext ``host:port`` and has no deadline by
default. ``connect()`` returns a subclass that dials every endpoint through one
gRPC channel (``ipv4:A,B,C``, round robin) with a retry policy on UNAVAILABLE,
optional TLS, a deadline on every call, and the ``hasleader`` metadata so a
member that lost its raft leader answers UNAVAILABLE at once (and the call is
retried on another member) instead of holding the call until it times out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as aetcd_exc
from aetcd import rpc, watcher

from doctor_common.config import Section

DEFAULT_PREFIX = "/nfv-doctor/default"

_ETCD_SERVICES = ("KV", "Lease", "Watch", "Cluster", "Maintenance", "Auth")
_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": f"etcdserverpb.{s}"} for s in _ETCD_SERVICES],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = DEFAULT_PREFIX
    lease_ttl_s: int = 2
    step_down_margin_s: float = 0.2
    call_timeout_s: float = 2.5
    write_deadline_s: float = 6.0
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_server_name: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    @classmethod
    def from_section(cls, s: Section) -> "EtcdConfig":
        """Read and validate an ``[etcd]`` table (``root.section("etcd")``); errors name file and key."""
        endpoints = s.str_list("endpoints", list(cls.endpoints))
        if not endpoints:
            raise s.error("endpoints", "give at least one host:port")
        for i, ep in enumerate(endpoints):
            _split_endpoint(ep, lambda msg, i=i: s.error(f"endpoints[{i}]", msg))
        prefix = s.str("prefix", DEFAULT_PREFIX)
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise s.error("prefix", f"must look like /nfv-doctor/site-a (leading /, no trailing /), got {prefix!r}")
        ca, cert, key = s.path("ca_file", None), s.path("cert_file", None), s.path("key_file", None)
        if (cert is None) != (key is None):
            raise s.error("cert_file" if cert is None else "key_file", "give both cert_file and key_file")
        for name, p in (("ca_file", ca), ("cert_file", cert), ("key_file", key)):
            if p is not None and not p.is_file():
                raise s.error(name, f"{p} is not a readable file")
        username = s.str("username", None)
        password = s.secret("password")
        if (username is None) != (password is None):
            raise s.error("username" if username is None else "password",
                          "give both username and password (or password_file)")
        ttl = s.int("lease_ttl_s", 2, min=1, max=3600)
        margin = s.float("step_down_margin_s", 0.2, min=0.01)
        if margin >= ttl / 2:
            raise s.error("step_down_margin_s", f"must be less than half of lease_ttl_s ({ttl / 2}), got {margin}")
        cfg = cls(
            endpoints=tuple(endpoints), prefix=prefix, lease_ttl_s=ttl, step_down_margin_s=margin,
            call_timeout_s=s.float("call_timeout_s", 2.5, min=0.1),
            write_deadline_s=s.float("write_deadline_s", 6.0, min=0.1),
            ca_file=ca, cert_file=cert, key_file=key,
            tls_server_name=s.str("tls_server_name", None),
            username=username, password=password,
        )
        s.done()
        return cfg


def load_etcd_config(path: Path | str) -> EtcdConfig:
    """The ``[etcd]`` table of a file that holds only it (tests, benches, tools)."""
    root = Section.load(path)
    cfg = EtcdConfig.from_section(root.section("etcd"))
    root.done()
    return cfg


def _split_endpoint(ep: str, error: Any) -> tuple[str, int]:
    host, sep, port = ep.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise error(f"expected host:port, got {ep!r}")
    return host, int(port)


def grpc_target(endpoints: tuple[str, ...] | list[str]) -> str:
    """One gRPC target for every member: ``ipv4:a:p,b:q`` (hostnames are resolved now)."""
    if len(endpoints) == 1:
        return endpoints[0]
    v4: list[str] = []
    v6: list[str] = []
    for ep in endpoints:
        host, port = _split_endpoint(ep, ValueError)
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = [ipaddress.ip_address(i[4][0]) for i in infos]
        for a in addrs:
            (v4 if a.version == 4 else v6).append(f"{a}:{port}" if a.version == 4 else f"[{a}]:{port}")
    if v4 and v6:
        return "ipv4:" + ",".join(v4)  # one scheme per target; IPv4 wins on a dual-stack list
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6))


class EtcdClient(aetcd.Client):
    """aetcd's client over a multi-endpoint, optionally TLS channel with deadlines and ``hasleader``."""

    def __init__(self, config: EtcdConfig) -> None:
        super().__init__(username=config.username, password=config.password,
                         timeout=config.call_timeout_s,  # type: ignore[arg-type]  # aetcd says int; float works
                         connect_wait_timeout=max(3, int(config.call_timeout_s)))
        self.config = config

    def _credentials(self) -> grpc.ChannelCredentials | None:
        c = self.config
        if not c.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=c.ca_file.read_bytes() if c.ca_file else None,
            private_key=c.key_file.read_bytes() if c.key_file else None,
            certificate_chain=c.cert_file.read_bytes() if c.cert_file else None)

    async def connect(self) -> None:
        """As ``aetcd.Client.connect``, with our channel and metadata."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            async with asyncio.timeout(self._connect_wait_timeout):  # not wait_for (gh-86296)
                await self._connected.wait()
            return
        try:
            self._is_connecting = True
            await self._open()
        except BaseException:
            if self.channel is not None:
                await self.channel.close()
            self._init_channel_attrs()
            raise
        finally:
            self._is_connecting = False

    async def reset(self) -> None:
        """Drop the channel; the next call dials and logs in again (etcd's simple auth tokens do not survive an
        etcd restart, and aetcd never renews them)."""
        await self.close()

    async def _open(self) -> None:
        options: list[tuple[str, Any]] = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        if self.config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.config.tls_server_name))
        target = grpc_target(self.config.endpoints)
        creds = self._credentials()
        self.channel = (grpc.aio.secure_channel(target, creds, options=options) if creds
                        else grpc.aio.insecure_channel(target, options=options))
        # a member without a raft leader refuses the call at once (UNAVAILABLE → retried elsewhere)
        metadata: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
        if self._username is not None and self._password is not None:
            self.auth_stub = rpc.AuthStub(self.channel)
            try:
                resp = await self.auth_stub.Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout)
            except rpc.AioRpcError as exc:
                aetcd_exc._handle_exception(exc)
            metadata += (("token", resp.token),)
        self.metadata = metadata
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata)
        self._connected.set()


def connect(config: EtcdConfig) -> EtcdClient:
    """A client for ``config`` (it dials lazily; use ``async with`` or call ``close()``)."""
    return EtcdClient(config)

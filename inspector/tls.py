"""The inspector's ``[tls]`` table: server certificates on its gRPC listeners, mutual TLS, and their reload.

```toml
[tls]
cert_file = "/etc/doctor/tls/inspector.pem"       # this replica's certificate chain (names its advertise host)
key_file = "/etc/doctor/tls/inspector.key"        # its private key (mode 0600 or 0640)
client_ca_file = "/etc/doctor/tls/ca.pem"         # verifies the client certificates of agents (and consumers)
require_client_cert_for = "agents"                # "agents", "all" or "none"
client_cert_listen = ["10.0.0.1:50052"]           # "agents": listeners that demand a client certificate
# ca_file = "/etc/doctor/tls/ca.pem"              # verifies the other replicas (default: client_ca_file)
# plaintext = true                                # no TLS, on purpose, also on addresses beyond loopback
```

Without ``cert_file`` the inspector listens in plaintext on loopback and unix sockets only; any other address
needs ``plaintext = true``. gRPC Python can only demand a client certificate of every connection of a listener
or of none, so "agents" serves ``client_cert_listen`` with a demanded certificate beside the ``listen``
addresses (server TLS only), and the gateway refuses agents that came without one (docs/tls.md).

``ServerCertificates`` hands gRPC a certificate-configuration fetcher: on each TLS handshake it compares the
files' stat against the last one (no read), and loads, checks and returns a new configuration when they
changed; a half-written or mismatched pair is logged and the running one kept.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from doctor_common.config import Section
from doctor_common.endpoint import parse_endpoint
from doctor_common.tls import ClientTls, Stamp, TlsFileError, check_ca, check_pair, stamp

log = logging.getLogger("doctor.inspector.tls")

MODES = ("agents", "all", "none")


def is_local(address: str) -> bool:
    """A unix socket, or a TCP address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if address.startswith("unix:"):
        return True
    if address.startswith(":"):
        return False  # every address
    try:
        host = parse_endpoint(address)[0] or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert_for: str = "none"
    client_cert_listen: tuple[str, ...] = ()
    plaintext: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @property
    def agents_need_cert(self) -> bool:
        return self.enabled and self.require_client_cert_for != "none"

    def peer_tls(self) -> ClientTls | None:
        """How this replica dials another (the leader probe): its own certificate as the client's."""
        if not self.enabled:
            return None
        return ClientTls(self.ca_file or self.client_ca_file, self.cert_file, self.key_file)

    @classmethod
    def from_section(cls, t: Section, listen: list[str]) -> "TlsConfig":
        """Read ``[tls]``; every file is read and checked now, and plaintext beyond loopback must be asked for."""
        cert, key = t.path("cert_file", None), t.path("key_file", None)
        client_ca, ca = t.path("client_ca_file", None), t.path("ca_file", None)
        plaintext = t.bool("plaintext", False)
        if "insecure" in t.data:
            raise t.error("insecure", "write plaintext = true")
        mode = t.choice("require_client_cert_for", MODES, "none")
        extra = t.str_list("client_cert_listen", [])
        t.done()
        if (cert is None) != (key is None):
            raise t.error("cert_file" if cert is None else "key_file", "give both cert_file and key_file")
        if cert is None:
            for name, value in (("client_ca_file", client_ca), ("ca_file", ca)):
                if value is not None:
                    raise t.error(name, "is for TLS: give cert_file and key_file too")
            if mode != "none" or extra:
                raise t.error("require_client_cert_for" if mode != "none" else "client_cert_listen",
                              "client certificates need TLS: give cert_file and key_file")
            public = [a for a in listen if not is_local(a)]
            if public and not plaintext:
                raise t.error("plaintext", f"listen address {public[0]!r} is not loopback: serve it with TLS "
                                           "(cert_file, key_file; docs/tls.md) or set plaintext = true to send "
                                           "tokens in clear on purpose")
            return cls(plaintext=plaintext)
        if plaintext:
            raise t.error("plaintext", "contradicts cert_file: with a certificate every listener serves TLS")
        try:
            check_pair(cert, key)  # type: ignore[arg-type]
            for name, value in (("client_ca_file", client_ca), ("ca_file", ca)):
                if value is not None:
                    check_ca(value, name)
        except TlsFileError as exc:
            raise t.error(exc.key, str(exc)) from None
        if mode != "none" and client_ca is None:
            raise t.error("client_ca_file", f"require_client_cert_for = {mode!r} needs the CA that signs the "
                                            "client certificates")
        if mode == "none" and client_ca is not None:
            raise t.error("require_client_cert_for", "client_ca_file is given: say whose certificates it checks "
                                                     "(\"agents\" or \"all\")")
        if mode == "agents" and not extra:
            raise t.error("client_cert_listen", "require_client_cert_for = \"agents\": list the addresses agents "
                                                "connect to (they demand a certificate; listen does not)")
        if mode != "agents" and extra:
            raise t.error("client_cert_listen", "is only for require_client_cert_for = \"agents\"")
        for index, address in enumerate(extra):
            if address in listen:
                raise t.error(f"client_cert_listen[{index}]", f"{address!r} is in [inspector] listen too: one "
                                                              "address, one kind of listener")
        return cls(cert, key, client_ca, ca, mode, tuple(extra), False)


class ServerCertificates:
    """One listener kind's certificate configuration for gRPC, reloaded when its files change (or on ``reload``).

    Each listener gets its own instance: a fetcher answers "changed" once per change, to its listener."""

    def __init__(self, cfg: TlsConfig, demand_client_cert: bool) -> None:
        assert cfg.cert_file is not None and cfg.key_file is not None
        self.cfg = cfg
        self.demand_client_cert = demand_client_cert
        self._lock = threading.Lock()
        self._stamp: Stamp = ()
        self.loads = 0
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._load(), self.fetch, require_client_authentication=demand_client_cert)

    def _files(self) -> tuple[Path | None, ...]:
        return (self.cfg.cert_file, self.cfg.key_file, self.cfg.client_ca_file)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files (TlsFileError), and remember their stat as of just before the read."""
        before = stamp(*self._files())
        cert, key = check_pair(self.cfg.cert_file, self.cfg.key_file)  # type: ignore[arg-type]
        ca = check_ca(self.cfg.client_ca_file, "client_ca_file") if self.cfg.client_ca_file else None
        self._stamp = before
        self.loads += 1
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called on every handshake (in a gRPC thread): None keeps the current configuration."""
        with self._lock:
            now = stamp(*self._files())
            if now == self._stamp:
                return None
            try:
                new = self._load()
            except TlsFileError as exc:
                self._stamp = now  # one complaint per version of the files, not one per handshake
                log.error("TLS files changed but cannot be used, the running certificate is kept: %s: %s",
                          exc.key, exc)
                return None
            except Exception as exc:  # noqa: BLE001 - a handshake must never fail because of our reload
                self._stamp = now
                log.error("TLS reload failed, the running certificate is kept: %s: %s", type(exc).__name__, exc)
                return None
            log.warning("TLS certificate reloaded from %s", self.cfg.cert_file)
            return new

    def reload(self) -> None:
        """SIGHUP: forget the stat, so the next handshake reads the files again (and says if they are bad)."""
        with self._lock:
            self._stamp = ()


def server_listeners(cfg: TlsConfig, listen: tuple[str, ...]) -> tuple[list[tuple[str, grpc.ServerCredentials | None]],
                                                                       list[ServerCertificates]]:
    """Every address with its credentials (None: plaintext), and the certificate holders to reload on SIGHUP.
    ``listen`` demands a client certificate only in "all"; ``client_cert_listen`` always does. One holder per
    address: gRPC hands a credentials object's initial configuration to its first listener only, and asks each
    listener's fetcher on that listener's handshakes."""
    if not cfg.enabled:
        return [(a, None) for a in listen], []
    plan = [(a, cfg.require_client_cert_for == "all") for a in listen] + [(a, True) for a in cfg.client_cert_listen]
    holders = [ServerCertificates(cfg, demand) for _, demand in plan]
    return [(a, h.credentials) for (a, _), h in zip(plan, holders)], holders

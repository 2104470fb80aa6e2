"""TLS shared by every daemon and client: certificate files checked at start-up, client credentials, peer identity.

- ``check_pair`` / ``check_ca``: a certificate, its key and a CA bundle are read and parsed at start-up (the
  stdlib's OpenSSL does it: a missing file, a garbled PEM or a key that is not the certificate's fails with a
  message naming the file).
- ``ClientTls``: what a client dials with (``ca_file``, optional ``cert_file``/``key_file`` for mutual TLS,
  ``server_name``). ``ssl_context()`` serves grpclib (the agent), ``grpc_tls.channel_credentials()`` grpcio (DoctorClient,
  the replicas' probes); both read the files again when they changed, so a new connection uses renewed ones.
- grpcio's side (channels, and ``peer_dns_names``: the DNS names of the caller's client certificate, verified by
  the server against its client CA; docs/tls.md) is in ``doctor_common/grpc_tls.py``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from doctor_common.config import Section

if TYPE_CHECKING:  # the agent imports this module but neither grpcio (it speaks grpclib; grpcio's side is
    # doctor_common/grpc_tls.py) nor, without TLS, ssl
    import ssl

Stamp = tuple[tuple[int, int, int, int], ...]
T = TypeVar("T")


class TlsFileError(ValueError):
    """A certificate, key or CA file is missing, unreadable, not PEM, or a key that is not its certificate's."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key  # the config key that named the bad file (cert_file, key_file, ca_file ...)
        super().__init__(message)


def stamp(*paths: Path | None) -> Stamp:
    """What changes when one of the files is rewritten or replaced: a cheap stat per file (no read)."""
    out = []
    for p in paths:
        if p is None:
            out.append((0, 0, 0, 0))
            continue
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((-1, -1, -1, -1))
    return tuple(out)


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsFileError(key, f"{path} does not exist") from None
    except OSError as exc:
        raise TlsFileError(key, f"cannot read {path}: {exc.strerror}") from None


def check_key_mode(key: str, path: Path) -> None:
    """A private key readable by everyone is refused (group-readable is allowed: ``root:doctor 0640``)."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return  # _read says why
    if mode & 0o007:
        raise TlsFileError(key, f"{path} is readable by others (mode {mode:04o}): chmod 600 (or 640 with the "
                                "daemon's group) it; a private key must not be world-readable")


def check_pair(cert: Path, key: Path, cert_key: str = "cert_file", key_key: str = "key_file") -> tuple[bytes, bytes]:
    """The certificate chain and private key as PEM bytes, after OpenSSL has parsed both and matched them."""
    import ssl  # here, not at the top: the agent keeps ssl out of a daemon that does not use TLS (agent/__main__.py)

    cert_pem, key_pem = _read(cert_key, cert), _read(key_key, key)
    check_key_mode(key_key, key)
    if b"-----BEGIN" not in cert_pem or b"CERTIFICATE-----" not in cert_pem:
        raise TlsFileError(cert_key, f"{cert} holds no PEM certificate")
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsFileError(key_key, f"{key} holds no PEM private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsFileError(key_key, f"{key} is not the private key of the certificate in {cert}") from None
        raise TlsFileError(cert_key, f"{cert} with key {key}: OpenSSL cannot load them: {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsFileError(cert_key, f"cannot load {cert}: {exc.strerror or exc}") from None
    return cert_pem, key_pem


def check_ca(path: Path, key: str = "ca_file") -> bytes:
    """A CA bundle as PEM bytes, after OpenSSL has parsed it."""
    import ssl

    pem = _read(key, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsFileError(key, f"{path} holds no PEM CA certificate OpenSSL can load: {exc.reason or exc}") from None
    return pem


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS: verify the server with ``ca_file`` (None: the system's CAs); present ``cert_file`` if set."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # the name to expect in the server's certificate, if not the dialled host
    _cache: dict[str, tuple[Stamp, Any]] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def from_section(cls, s: Section, prefix: str = "") -> "ClientTls | None":
        """``{prefix}ca_file``, ``{prefix}cert_file``, ``{prefix}key_file``, ``{prefix}tls_server_name`` of a table;
        None when none is given (plaintext). Every file is read and checked now (errors name file and key)."""
        ca, cert, key = s.path(f"{prefix}ca_file", None), s.path(f"{prefix}cert_file", None), s.path(f"{prefix}key_file", None)
        name = s.str(f"{prefix}tls_server_name", None)
        if ca is None and cert is None and key is None:
            if name is not None:
                raise s.error(f"{prefix}tls_server_name", f"is for TLS: give {prefix}ca_file too")
            return None
        if (cert is None) != (key is None):
            raise s.error(f"{prefix}cert_file" if cert is None else f"{prefix}key_file",
                          f"give both {prefix}cert_file and {prefix}key_file (the client certificate and its key)")
        tls = cls(ca, cert, key, name)
        try:
            tls.check(prefix)
        except TlsFileError as exc:
            raise s.error(exc.key, str(exc)) from None
        return tls

    def check(self, prefix: str = "") -> None:
        if self.ca_file is not None:
            check_ca(self.ca_file, f"{prefix}ca_file")
        if self.cert_file is not None and self.key_file is not None:
            check_pair(self.cert_file, self.key_file, f"{prefix}cert_file", f"{prefix}key_file")

    def _stamp(self) -> Stamp:
        return stamp(self.ca_file, self.cert_file, self.key_file)

    def cached(self, kind: str, build: Callable[[], T]) -> T:
        """The last ``kind`` built, or a new one when a file changed since (renewed certificates: no restart)."""
        with self._lock:
            now = self._stamp()
            hit = self._cache.get(kind)
            if hit is not None and hit[0] == now:
                return hit[1]  # type: ignore[no-any-return]
            value = build()  # a failure (a pair half rotated) caches nothing: the next connection tries again
            self._cache[kind] = (now, value)
            return value

    def ssl_context(self) -> ssl.SSLContext:
        """For grpclib (``Channel(ssl=...)``): TLS 1.2+, ALPN h2, the server verified, our certificate presented."""
        import ssl

        def build() -> ssl.SSLContext:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                             cafile=str(self.ca_file) if self.ca_file else None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_alpn_protocols(["h2"])
            if self.cert_file is not None and self.key_file is not None:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            return ctx
        return self.cached("ssl", build)

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

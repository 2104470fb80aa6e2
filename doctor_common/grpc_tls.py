"""TLS for grpcio (the inspector, doctorctl, DoctorClient): channel credentials from ``ClientTls``'s files, and
the names in a caller's client certificate on the server side.

Apart from ``doctor_common/tls.py`` because the agent, which speaks grpclib,
imports that one and must load nothing of grpcio (``tests/unit/test_packaging.py``).
"""

from __future__ import annotations

import grpc

from doctor_common.tls import ClientTls


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    """For grpcio channels (``grpc.aio.secure_channel``); built again when a file changed (renewed certificates)."""
    def build() -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
            private_key=tls.key_file.read_bytes() if tls.key_file else None,
            certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None)
    return tls.cached("grpc", build)


def secure_channel(target: str, tls: ClientTls | None, options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to ``target``: TLS when ``tls`` is given, plaintext otherwise."""
    opts = list(options or [])
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts)
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=opts + tls.channel_options())


def peer_dns_names(context: grpc.aio.ServicerContext) -> frozenset[str] | None:
    """The DNS subjectAltNames of the caller's client certificate (lower case), verified by gRPC against the
    server's client CA; None when the caller presented none (plaintext, or a listener that asks for none)."""
    try:
        auth = context.auth_context()
    except Exception:  # noqa: BLE001 - a context without a transport's auth data: no certificate
        return None
    if not auth.get("x509_pem_cert") and not auth.get("x509_subject"):
        return None
    return frozenset(n.decode(errors="replace").lower() for n in auth.get("peer_dns", ()))

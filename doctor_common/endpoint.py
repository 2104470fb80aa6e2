"""gRPC endpoints as agents dial them: the agent's ``inspector`` list and the ``advertise_agents`` it is redirected to.

Accepted: ``host:port``, ``[v6 address]:port``, ``dns:///host:port`` and
``unix:/abs/path`` (or ``unix:///abs/path``). gRPC's other schemes (``ipv4:``,
``unix-abstract:``, ``dns://authority/``) are refused with a message saying
what to write instead.
"""

from __future__ import annotations

import ipaddress

EXPECTED = "expected host:port, [v6 address]:port, dns:///host:port or unix:/absolute/path"
OTHER_SCHEMES = ("unix-abstract:", "ipv4:", "ipv6:", "dns:", "vsock:", "xds:")


def parse_endpoint(target: str) -> tuple[str | None, int | None, str | None]:
    """``target`` → (host, port, None) or (None, None, path). Raises ValueError saying what is wrong."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if path.startswith("//"):  # unix:///abs/path
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"endpoint {target!r}: unix: needs an absolute socket path (unix:/run/doctor/agent.sock)")
        return None, None, path
    rest = target.removeprefix("dns:///")
    if rest.startswith(OTHER_SCHEMES):
        raise ValueError(f"endpoint {target!r}: gRPC's {rest.split(':')[0]}: form is not supported; {EXPECTED}")
    host, sep, port_s = rest.rpartition(":")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"endpoint {target!r}: {EXPECTED}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint {target!r}: {host!r} is not an IPv6 address") from None
    elif not sep or not host or ":" in host or "/" in host:
        raise ValueError(f"endpoint {target!r}: {EXPECTED}")
    else:
        try:
            host.encode("idna")  # what the resolver will do with it: empty or over-long labels fail here
        except UnicodeError:
            raise ValueError(f"endpoint {target!r}: {host!r} is not a valid host name") from None
    if not (port_s.isascii() and port_s.isdigit() and 0 < int(port_s) < 65536):
        raise ValueError(f"endpoint {target!r}: port {port_s!r} is not a number from 1 to 65535")
    return host, int(port_s), None

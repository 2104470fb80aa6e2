"""Inspector endpoints as the agent's configuration and a Redirect write them."""

from __future__ import annotations

import ipaddress


def parse_endpoint(target: str) -> tuple[str | None, int | None, str | None]:
    """``host:port``, ``[v6]:port``, ``dns:///host:port`` or ``unix:/path`` → (host, port, path).

    Raises ValueError saying what a valid endpoint looks like.
    """
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if path.startswith("//"):  # unix:///abs/path
            path = path[2:]
        if not path:
            raise ValueError(f"endpoint {target!r}: unix: needs a socket path (unix:/run/doctor/inspector.sock)")
        return None, None, path
    rest = target.removeprefix("dns:///")
    host, sep, port_s = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"endpoint {target!r}: {host!r} is not an IPv6 address") from None
    if not sep or not host or ":" in host and not rest.startswith("["):
        raise ValueError(f"endpoint {target!r}: expected host:port, [v6 address]:port or unix:/path")
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"endpoint {target!r}: port {port_s!r} is not a number from 1 to 65535")
    return host, port, None

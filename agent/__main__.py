"""``doctor-agent`` / ``python -m agent``: the daemon's entry point.

Python's ``ssl`` module is kept out before anything imports asyncio, unless
the agent's configuration asks for TLS (``ca_file``, ``cert_file`` or
``key_file`` in ``[agent]``; docs/tls.md): asyncio and grpclib import it, with
libssl and libcrypto, only to offer TLS: about 4 MB of the agent's 40 MB
budget. Library code and tests that import ``agent.main`` are not affected.
"""

from __future__ import annotations

import sys
import tomllib

TLS_KEYS = ("ca_file", "cert_file", "key_file")


def wants_tls(argv: list[str]) -> bool:
    """Does the configuration named on the command line (or the default one) ask for TLS? Unreadable: say yes,
    and let the configuration's own checks report what is wrong."""
    path = "/etc/doctor/agent.toml"
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("-c") and len(arg) > 2:
            path = arg[2:]
    try:
        with open(path, "rb") as f:
            agent = tomllib.load(f).get("agent", {})
    except (OSError, ValueError):
        return True
    return not isinstance(agent, dict) or any(key in agent for key in TLS_KEYS)


def run() -> int:
    if not wants_tls(sys.argv[1:]):
        sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # ``import ssl`` now raises ImportError
    from agent.main import cli

    return cli()


if __name__ == "__main__":
    sys.exit(run())

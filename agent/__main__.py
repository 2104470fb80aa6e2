"""``doctor-agent`` / ``python -m agent``: the daemon's entry point.

Python's ``ssl`` module is kept out before anything imports asyncio: the agent
never uses it (its stream to the inspector is plain HTTP/2 on a host network
or a unix socket), and asyncio and grpclib import it, with libssl and
libcrypto, only to offer TLS: about 4 MB of the agent's 40 MB budget. Library
code and tests that import ``agent.main`` are not affected.
"""

from __future__ import annotations

import sys


def run() -> int:
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # ``import ssl`` now raises ImportError
    from agent.main import cli

    return cli()


if __name__ == "__main__":
    sys.exit(run())

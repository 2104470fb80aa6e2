"""``doctor-inspector`` / ``python -m inspector``: the daemon's entry point.

It first checks that the ``[inspector]`` extra is installed: a compute node's install (``nfv-doctor[agent]``)
has the command too, and without the extra the daemon would die of an ImportError naming one module. The
exit status is 2, as for a bad configuration: restarting cannot fix it (``RestartPreventExitStatus=2``).
"""

from __future__ import annotations

import sys

from doctor_common.extras import INSPECTOR, missing


def run() -> int:
    why = missing("inspector", INSPECTOR)
    if why:
        print(f"doctor-inspector {why}", file=sys.stderr)
        return 2
    from inspector.main import cli

    return cli()


if __name__ == "__main__":
    sys.exit(run())

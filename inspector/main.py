"""doctor-inspector: run one inspector replica from a TOML config.

Under systemd (``Type=notify``) it says READY=1 once it serves, pings the
watchdog while its event loop turns (a blocked loop pings nothing), exits
non-zero the moment a main loop ends, and says STOPPING=1 on the way out.
SIGHUP (``systemctl reload``) reads the configuration again: tokens,
consumers, policy and the embedded inventory, all checked before any is taken.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from google.protobuf.internal import api_implementation

from doctor_common import __version__
from doctor_common.config import ConfigError
from doctor_common.logs import setup_logging
from doctor_common.systemd import Liveness, SystemdNotifier, watchdog
from inspector.config import InspectorConfig, load_inspector_config
from inspector.core import Inspector
from inspector.response import crashpoint

log = logging.getLogger("doctor.inspector")


async def main(cfg: InspectorConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("doctor-inspector %s, protobuf %s", __version__, api_implementation.Type())
    inspector = Inspector(cfg)
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:  # SIGHUP (systemctl reload): tokens, consumers, policy, inventory
        task = asyncio.ensure_future(inspector.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)
    loop.add_signal_handler(signal.SIGHUP, reload)
    notifier = SystemdNotifier()
    dog: asyncio.Task[None] | None = None
    stopped = asyncio.create_task(stop.wait(), name="stop")
    try:
        await inspector.start()
        # the pings stop when the event loop blocks; a main loop that ends exits the daemon below
        dog = asyncio.create_task(watchdog(notifier, Liveness()), name="watchdog")
        notifier.ready(f"serving on {', '.join(cfg.listen)}")
        loops = inspector.main_loops()
        await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        dead = next((t for t in loops if t.done()), None)
        if dead is not None and not stop.is_set():
            # a dead main loop must not leave a live-looking process
            log.critical("loop %s died: %r; exiting", dead.get_name(), dead.cancelled() or dead.exception())
            return 1
        return 0
    finally:
        notifier.stopping()
        for task in (stopped, dog):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (stopped, dog) if t is not None), return_exceptions=True)
        await inspector.stop()
        notifier.close()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor-inspector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", "-c", type=Path, default=Path("/etc/doctor/inspector.toml"))
    parser.add_argument("--check-config", action="store_true", help="validate the config file and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_inspector_config(args.config)
    except ConfigError as exc:
        print(f"doctor-inspector: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        e = cfg.etcd
        mode = (f"replicated: etcd {','.join(e.endpoints)} under {e.prefix}, advertising {cfg.advertise}" if e
                else "standalone, NOT highly available")
        t = cfg.tls
        tls = (f"TLS, client certificates: {t.require_client_cert_for}" if t.enabled else
               "PLAINTEXT on purpose (tokens in clear)" if t.plaintext else "plaintext on loopback and unix sockets")
        print(f"{args.config}: ok (node {cfg.node_id}, controller {cfg.controller.name}, {mode}; {tls})")
        asyncio.run(cfg.controller.close())
        return 0
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        crashpoint.arm_from_env()  # test hooks; never set in production
    except ValueError as exc:
        print(f"doctor-inspector: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(main(cfg))


if __name__ == "__main__":
    sys.exit(cli())

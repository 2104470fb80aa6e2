"""doctor-agent: run the configured checkers and stream their state to the inspector."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.checkers.base import Checker, Reading, Status
from agent.config import AgentConfig, load_agent_config
from agent.state import AgentState
from agent.transport import AgentLink
from doctor_common import __version__
from doctor_common.api import common_pb2
from doctor_common.config import ConfigError
from doctor_common.logs import setup_logging

log = logging.getLogger("doctor.agent")


async def supervise(checker: Checker, state: AgentState, max_backoff_s: float = 30.0) -> None:
    """Run one checker forever: a crash is reported as the checker's own component and the checker restarts."""
    component = f"agent.checker:{checker.name}"
    backoff = 0.5
    while True:
        try:
            async for reading in checker.watch():
                state.update(checker.name, reading)
                backoff = 0.5
            raise RuntimeError("watch() returned")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # isolate: one checker's bug must not take the others down
            log.exception("checker %s crashed; restarting in %.1fs", checker.name, backoff)
            state.update("agent", Reading(component, Status.UNKNOWN, "compute.host.agent.checker_failed",
                                          common_pb2.SEVERITY_WARNING, f"checker {checker.name} crashed: {exc}"))
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state = AgentState(cfg.host_id, __version__)
        self.link = AgentLink(self.state, cfg.endpoints, cfg.token, cfg.heartbeat_interval_s, cfg.max_backoff_s)
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self, stop: asyncio.Event) -> None:
        for checker in self.cfg.checkers:
            self.tasks.append(asyncio.create_task(supervise(checker, self.state), name=f"checker-{checker.name}"))
        self.tasks.append(asyncio.create_task(self.link.run(), name="transport"))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*self.tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception():
                    # a dead main loop must not leave a live-looking process
                    raise RuntimeError(f"agent loop {task.get_name()} died") from task.exception()
            await self.link.goodbye("agent stopping")
        finally:
            stopper.cancel()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def main(cfg: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("doctor-agent %s for host %s, checkers: %s", __version__, cfg.host_id,
             ", ".join(c.name for c in cfg.checkers))
    await Agent(cfg).run(stop)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor-agent", description=__doc__)
    parser.add_argument("--config", "-c", type=Path, default=Path("/etc/doctor/agent.toml"))
    parser.add_argument("--check-config", action="store_true", help="validate the config file and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"doctor-agent: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: ok (host {cfg.host_id}, {len(cfg.checkers)} checkers)")
        return 0
    setup_logging(cfg.log_level)
    try:
        asyncio.run(main(cfg))
    except RuntimeError as exc:
        log.critical("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())

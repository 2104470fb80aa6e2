"""doctor-agent: run the configured checkers and stream their state to the inspector.

Every checker runs under a ``Supervisor``: a crash is reported as the
component ``agent.checker:<name>`` and the checker restarts with backoff,
never taking the others down. Under systemd (``Type=notify``) the agent says
READY=1 once every checker has reported, and pings the watchdog only while
every loop (each supervisor, the transport) is alive; a loop that ends makes
the agent exit non-zero, so systemd restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from agent.checkers.base import Checker, Reading, Status, set_beat
from agent.config import AgentConfig, load_agent_config
from agent.state import AgentState
from agent.transport import AgentLink
from agent.host_facts import host_facts
from doctor_common import __version__
from doctor_common.agent_limits import MAX_CHECKERS, MAX_TEXT
from doctor_common.api import agent_pb2, common_pb2
from doctor_common.config import ConfigError
from doctor_common.logs import setup_logging
from doctor_common.systemd import Liveness, SystemdNotifier, watchdog
from doctor_common.timeline import now_ns

log = logging.getLogger("doctor.agent")

CHECKER_FAILED = "compute.host.agent.checker_failed"
READY_TIMEOUT_S = 30.0     # READY=1 at the latest this long after start, whatever a checker does
TRANSPORT_DEADLINE_S = 60.0  # a connect to a black-holed inspector can take ~20 s
FACTS_TIMEOUT_S = 3.0      # reading the host facts (agent/host_facts.py) before the first Hello


class Supervisor:
    """Runs one checker forever: a crash is reported as the checker's own component and the checker restarts."""

    def __init__(self, checker: Checker, state: AgentState, liveness: Liveness | None = None,
                 max_backoff_s: float = 30.0, initial_backoff_s: float = 0.5) -> None:
        self.checker = checker
        self.state = state
        self.liveness = liveness
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = min(initial_backoff_s, max_backoff_s)
        self.component = f"agent.checker:{checker.name}"
        self.restarts = 0
        self.last_crash = ""
        self.started = asyncio.Event()  # the checker reported (or crashed) at least once

    def deadline_s(self) -> float | None:
        limit = getattr(self.checker, "liveness_s", None)
        # silent at most: a backoff before a restart, then the checker's own limit
        return None if limit is None else float(limit) + self.max_backoff_s

    async def run(self) -> None:
        loop = None
        if self.liveness is not None:
            loop = self.liveness.register(f"checker:{self.checker.name}", self.deadline_s(),
                                          asyncio.current_task())  # type: ignore[arg-type]
        beat = loop.beat if loop is not None else (lambda: None)
        token = set_beat(beat)  # the checker's own alive() calls reach this loop's beat
        crashed = False
        backoff = self.initial_backoff_s
        try:
            while True:
                try:
                    async for reading in self.checker.watch():
                        self.state.update(self.checker.name, reading)
                        beat()
                        self.started.set()
                        if crashed:
                            crashed = False
                            self.state.update("agent", Reading(self.component, Status.OK,
                                                               details={"restarts": str(self.restarts)}))
                        backoff = self.initial_backoff_s
                    raise RuntimeError("watch() returned")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # isolate: one checker's bug must not take the others down
                    self.restarts += 1
                    self.last_crash = f"{type(exc).__name__}: {exc}"
                    log.exception("checker %s crashed; restarting in %.1fs", self.checker.name, backoff)
                    crashed = True
                    self.state.update("agent", Reading(
                        self.component, Status.UNKNOWN, CHECKER_FAILED, common_pb2.SEVERITY_WARNING,
                        f"checker {self.checker.name} crashed: {exc}", {"restarts": str(self.restarts)}))
                    self.started.set()
                beat()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        finally:
            token.var.reset(token)
            if loop is not None:
                loop.close()

    def health(self) -> agent_pb2.CheckerHealth:
        """What Diagnostics shows of this checker: crashes, and each check's runs (polling checkers)."""
        stats = getattr(self.checker, "stats", None)
        # within the gateway's limits: a report it refuses would end the event stream, again at every connect
        checks = [s.to_proto(name) for name, s in list(stats.items())[:MAX_CHECKERS]] if isinstance(stats, dict) else []
        return agent_pb2.CheckerHealth(checker=self.checker.name, restarts=self.restarts,
                                       last_crash=self.last_crash[:MAX_TEXT], checks=checks)


class Agent:
    def __init__(self, cfg: AgentConfig, notifier: SystemdNotifier | None = None,
                 watchdog_period_s: float | None = None, checker_backoff_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self.cfg = cfg
        self.state = AgentState(cfg.host_id, __version__)
        self.liveness = Liveness()
        self.notifier = notifier if notifier is not None else SystemdNotifier(env={})
        self.watchdog_period_s = watchdog_period_s
        first, most = checker_backoff_s
        self.supervisors = [Supervisor(c, self.state, self.liveness, most, first) for c in cfg.checkers]
        self.link = AgentLink(self.state, cfg.endpoints, cfg.token, cfg.heartbeat_interval_s, cfg.max_backoff_s,
                              keepalive_ms=cfg.keepalive_ms, health=self.health, health_interval_s=cfg.health_interval_s,
                              tls=cfg.tls)
        self.ready = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def _announce_ready(self) -> None:
        waiting = [asyncio.create_task(s.started.wait()) for s in self.supervisors]
        try:
            await asyncio.wait(waiting, timeout=READY_TIMEOUT_S)
        finally:
            for w in waiting:
                w.cancel()
        late = [s.checker.name for s in self.supervisors if not s.started.is_set()]
        status = f"{len(self.supervisors)} checkers running" + (f"; not reported yet: {', '.join(late)}" if late else "")
        self.ready.set()
        self.notifier.ready(status)
        log.info("ready: %s", status)

    async def run(self, stop: asyncio.Event) -> None:
        try:  # before the first Hello, which carries them; bounded: a hanging probe delays nothing for long
            async with asyncio.timeout(FACTS_TIMEOUT_S):  # not wait_for: it can swallow a cancellation on 3.11
                self.state.facts = await asyncio.to_thread(host_facts)
        except (TimeoutError, OSError) as exc:
            log.warning("host facts (firmware, hypervisor versions) not read: %s", exc or type(exc).__name__)
        for sup in self.supervisors:
            self.tasks.append(asyncio.create_task(sup.run(), name=f"checker-{sup.checker.name}"))
        transport = asyncio.create_task(self.link.run(), name="transport")
        self.link.beat = self.liveness.register("transport", TRANSPORT_DEADLINE_S, transport).beat  # type: ignore[arg-type]
        self.tasks.append(transport)
        self.tasks.append(asyncio.create_task(watchdog(self.notifier, self.liveness, self.watchdog_period_s),
                                              name="watchdog"))
        announcer = asyncio.create_task(self._announce_ready(), name="ready")
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*self.tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    # a dead main loop must not leave a live-looking process
                    raise RuntimeError(f"agent loop {task.get_name()} ended") from (
                        None if task.cancelled() else task.exception())
            self.notifier.stopping("stopping")
            await self.link.goodbye("agent stopping")
        finally:
            stopper.cancel()
            announcer.cancel()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, announcer, return_exceptions=True)

    def health(self) -> agent_pb2.AgentHealth:
        """The agent's own health as it reports it to the inspector (Diagnostics shows the latest)."""
        return agent_pb2.AgentHealth(
            checkers=[s.health() for s in self.supervisors[:MAX_CHECKERS]], collected_unix_nanos=now_ns(),
            loops_not_alive=[f"{name}: {why}"[:MAX_TEXT]
                             for name, why in sorted(self.liveness.problems().items())[:MAX_CHECKERS]])



async def main(cfg: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("doctor-agent %s for host %s, checkers: %s", __version__, cfg.host_id,
             ", ".join(c.name for c in cfg.checkers))
    notifier = SystemdNotifier(unset_env=True)  # exec checks must not inherit NOTIFY_SOCKET
    try:
        await Agent(cfg, notifier).run(stop)
    finally:
        notifier.close()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor-agent", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", "-c", type=Path, default=Path("/etc/doctor/agent.toml"))
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config file, and that this host has what it names (interfaces), and exit")
    parser.add_argument("--no-host-checks", action="store_true",
                        help="with --check-config: the file only (systemd's ExecStartPre: an interface gone since "
                             "must not keep the agent from starting and reporting it)")
    args = parser.parse_args(argv)
    try:
        cfg = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"doctor-agent: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        problems = [] if args.no_host_checks else [
            f"{args.config}: checkers.{c.name}.{key}: {what}" for c in cfg.checkers
            for key, what in (c.check_host() if hasattr(c, "check_host") else [])]
        if problems:
            print("doctor-agent: bad configuration for this host:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        print(f"{args.config}: ok (host {cfg.host_id}, checkers: {', '.join(c.name for c in cfg.checkers)})")
        return 0
    setup_logging(cfg.log_level, cfg.log_format)
    try:
        asyncio.run(main(cfg))
    except RuntimeError as exc:
        log.critical("%s", exc, exc_info=exc.__cause__ is not None)
        return 1
    return 0

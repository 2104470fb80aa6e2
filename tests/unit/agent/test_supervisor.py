"""Crash isolation, READY, the watchdog and a dead main loop, with the agent in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent import main as agent_main
from agent.checkers.base import Reading, Status
from agent.config import AgentConfig
from agent.main import CHECKER_FAILED, Agent, Supervisor
from agent.state import AgentState
from doctor_common.systemd import SystemdNotifier
from tests.conftest import NotifySocket, anotify_until, free_port


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


class Steady:
    """Reports a new level every few milliseconds, forever."""

    name = "steady"
    liveness_s = 1.0

    def __init__(self) -> None:
        self.count = 0

    async def watch(self) -> AsyncIterator[Reading]:
        while True:
            self.count += 1
            yield Reading("steady:x", Status.OK if self.count % 2 else Status.WARNING)
            await asyncio.sleep(0.005)


class Crashy:
    """Crashes after one reading on its first three watches, then behaves."""

    name = "crashy"

    def __init__(self) -> None:
        self.watches = 0

    async def watch(self) -> AsyncIterator[Reading]:
        self.watches += 1
        yield Reading("crashy:x", Status.OK)
        if self.watches <= 3:
            raise ZeroDivisionError("checker bug")
        await asyncio.Event().wait()


class Hangs:
    """Reports once, then hangs without ever beating again (a stuck loop)."""

    name = "hangs"
    liveness_s = 0.2

    async def watch(self) -> AsyncIterator[Reading]:
        yield Reading("hangs:x", Status.OK)
        await asyncio.Event().wait()


async def test_a_crashing_checker_is_restarted_reported_and_isolated() -> None:
    """Crashes raise agent.checker:crashy, restarts follow, the other checker never stops, recovery clears it."""
    state = AgentState("h1", "test")
    steady, crashy = Steady(), Crashy()
    sups = [Supervisor(steady, state, max_backoff_s=0.02, initial_backoff_s=0.01),
            Supervisor(crashy, state, max_backoff_s=0.02, initial_backoff_s=0.01)]
    tasks = [asyncio.create_task(s.run()) for s in sups]
    try:
        await wait_until(lambda: "agent.checker:crashy" in state.components)
        assert state.components["agent.checker:crashy"].fault_type == CHECKER_FAILED
        await wait_until(lambda: crashy.watches == 4 and
                         state.components["agent.checker:crashy"].status == Status.OK)
        assert sups[1].restarts == 3 and "ZeroDivisionError" in sups[1].last_crash
        before = steady.count
        await wait_until(lambda: steady.count > before + 3)  # still running after all that
        assert all(not t.done() for t in tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def config(*checkers: object) -> AgentConfig:
    return AgentConfig(host_id="h1", endpoints=(f"127.0.0.1:{free_port()}",), checkers=checkers,
                       max_backoff_s=0.5)


async def test_ready_then_watchdog_until_a_checker_hangs(notify: NotifySocket) -> None:
    """READY=1 once both checkers reported; pings while alive; a checker silent past its deadline stops them."""
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "40000"})
    agent = Agent(config(Steady(), Hangs()), notifier, checker_backoff_s=(0.01, 0.05))
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        *early, msg = await anotify_until(notify.arecv, "READY=1")
        assert set(early) <= {"WATCHDOG=1"}  # pings may start while the checkers start up
        assert msg.startswith("READY=1\nSTATUS=2 checkers running")
        *pings, msg = await anotify_until(notify.arecv, "STATUS=")
        assert set(pings) <= {"WATCHDOG=1"} and len(pings) >= 2  # the hung checker's deadline is 0.25 s, pings come every 20 ms
        assert msg.startswith("STATUS=loops not alive: checker:hangs: silent for")
        with pytest.raises(asyncio.TimeoutError):
            await notify.arecv(timeout=0.3)  # 15 periods, not one ping
        assert any(line.startswith("checker:hangs: ") for line in agent.health().loops_not_alive)
        assert not run.done()  # hung is systemd's to judge: it kills and restarts us
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)
        notifier.close()
    assert (await notify.arecv()).startswith("STOPPING=1")


async def test_a_dead_main_loop_ends_the_agent() -> None:
    """When a main loop (here the transport) dies, run() raises instead of idling on."""
    agent = Agent(config(Steady()))

    async def broken() -> None:
        raise ValueError("transport bug")

    agent.link.run = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="agent loop transport ended") as err:
        await asyncio.wait_for(agent.run(asyncio.Event()), 5)
    assert isinstance(err.value.__cause__, ValueError)


def test_cli_exits_non_zero_when_a_loop_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's exit status is 1, so systemd's Restart=on-failure restarts it."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nhost_id = "h1"\ninspector = ["127.0.0.1:{free_port()}"]\nlog_level = "error"\n'
                   '[checkers.nic]\ninterfaces = ["lo"]\n')

    async def broken(self: object) -> None:
        raise ValueError("transport bug")

    monkeypatch.setattr(agent_main.AgentLink, "run", broken)
    assert agent_main.cli(["--config", str(cfg)]) == 1


async def test_diagnostics_expose_each_checks_runs() -> None:
    """A supervisor's health report carries a polling checker's runs (for the Diagnostics service)."""
    from agent.checkers.exec import ExecChecker
    from doctor_common.config import Section

    checker = ExecChecker.from_config(Section(Path("a.toml"), {"commands": {"t": {"argv": ["true"]}}},
                                              "checkers.exec."), "h1")
    state = AgentState("h1", "test")
    sup = Supervisor(checker, state)
    task = asyncio.create_task(sup.run())
    try:
        await wait_until(lambda: sup.health().checks[0].runs == 1)
        health = sup.health()
        assert (health.checker, health.checks[0].check) == ("exec", "t")
        last = health.checks[0].recent[-1]
        assert last.outcome == "ok" and last.duration_ms > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_health_report_stays_within_what_the_gateway_accepts() -> None:
    """More checks than the gateway takes in one report (an exec checker with many commands): the report is cut
    to the limit instead of being refused, which would end the agent's event stream at every connect."""
    from agent.checkers.exec import ExecChecker
    from doctor_common.agent_limits import MAX_CHECKERS
    from doctor_common.api import agent_pb2
    from doctor_common.config import Section
    from inspector.southbound.messages import check_health

    commands = {f"c{i}": {"argv": ["true"]} for i in range(MAX_CHECKERS + 5)}
    checker = ExecChecker.from_config(Section(Path("a.toml"), {"commands": commands}, "checkers.exec."), "h1")
    health = Supervisor(checker, AgentState("h1", "test")).health()
    assert len(health.checks) == MAX_CHECKERS
    check_health(agent_pb2.AgentHealth(checkers=[health]))

"""A site for maintenance sessions: an inspector with its embedded controller and virtual BMCs, owners that
subscribe and answer, an administrator following a session's progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from doctor_common.api import fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, wait_for


class Owner:
    """A consumer's subscription: its maintenance notices and fault notifications, in order."""

    def __init__(self, lab: Lab, principal: str) -> None:
        self.principal = principal
        self.client = DoctorClient(lab.endpoint, lab.tokens[principal])
        self.notices: list[mpb.MaintenanceNotification] = []
        self.faults: list[fault_pb2.FaultNotification] = []
        self.sequences: list[int] = []
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> "Owner":
        async def run() -> None:
            async for msg in self.client.subscribe(max_backoff_s=0.2):
                kind = msg.WhichOneof("kind")
                if kind == "subscribed":
                    self.subscribed = True
                elif kind == "maintenance":
                    self.notices.append(msg.maintenance)
                    self.sequences.append(msg.maintenance.sequence)
                else:
                    self.faults.append(msg.fault)
                    self.sequences.append(msg.fault.sequence)
        self._task = asyncio.create_task(run())
        await wait_for(lambda: self.subscribed, 10, 0.01, f"{self.principal}'s subscription")
        return self

    def states(self, session_id: str) -> list[int]:
        self._alive()
        return [n.state for n in self.notices if n.session_id == session_id]

    def _alive(self) -> None:
        """A subscription loop that ended (an error DoctorClient does not retry) fails the wait at once, saying
        why, instead of letting it time out."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise AssertionError(f"{self.principal}'s subscription ended: {self._task.exception()!r}")

    async def notice(self, session_id: str, state: int, timeout: float = 10.0) -> mpb.MaintenanceNotification:
        await wait_for(lambda: state in self.states(session_id), timeout, 0.01,
                       f"{self.principal}'s {mpb.SessionState.Name(state)} notice of {session_id}")
        return next(n for n in self.notices if n.session_id == session_id and n.state == state)

    async def notice_any(self, state: int, timeout: float = 15.0) -> mpb.MaintenanceNotification:
        """The first notice in ``state`` of any session (when the test does not know the session yet)."""
        await wait_for(lambda: self._alive() or any(n.state == state for n in self.notices), timeout, 0.01,
                       f"{self.principal}'s {mpb.SessionState.Name(state)} notice")
        return next(n for n in self.notices if n.state == state)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


class Progress:
    """An administrator's StateChange stream, read to its end in the background."""

    def __init__(self, stream: Any) -> None:
        self.events: list[mpb.MaintenanceProgress] = []
        self.error: BaseException | None = None
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: Any) -> None:
        try:
            async for msg in stream:
                self.events.append(msg)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc

    @property
    def session_id(self) -> str:
        return self.events[0].session.session_id

    async def first(self, timeout: float = 10.0) -> str:
        await wait_for(lambda: self.events or self.error, timeout, 0.01, "the session's first progress")
        if self.error is not None:
            raise self.error
        return self.session_id

    async def end(self, timeout: float = 20.0) -> mpb.SessionInfo:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        if self.error is not None:
            raise self.error
        return self.events[-1].session

    def states(self) -> list[int]:
        out: list[int] = []
        for e in self.events:
            if not out or out[-1] != e.session.state:
                out.append(e.session.state)
        return out


@pytest.fixture
async def site() -> AsyncIterator[Callable[..., Any]]:
    """``await site(**Lab kwargs)``: a started lab (no agents unless asked); ``site.owner(lab, p)`` subscribes."""
    labs: list[Lab] = []
    owners: list[Owner] = []
    admins: list[DoctorClient] = []

    async def make(agents: bool = False, **kw: Any) -> Lab:
        kw.setdefault("netns", agents)
        lab = Lab(**kw)
        labs.append(lab)
        await lab.start(agents=agents)
        return lab

    async def owner(lab: Lab, principal: str) -> Owner:
        o = await Owner(lab, principal).start()
        owners.append(o)
        return o

    def admin(lab: Lab) -> DoctorClient:
        c = DoctorClient(lab.endpoint, lab.tokens["admin"])
        admins.append(c)
        return c

    make.owner = owner  # type: ignore[attr-defined]
    make.admin = admin  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for o in owners:
            await o.close()
        for c in admins:
            await c.close()
        for lab in labs:
            await lab.close()

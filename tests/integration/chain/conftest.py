"""Fixtures for the real fault chain: namespaced hosts, agents, virtual BMCs, an inspector, consumers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from doctor_common.api import fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, wait_for


async def still(condition: Callable[[], Any], seconds: float) -> None:
    """Absence of an action can only be observed over a period: ``condition`` holds throughout."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert condition()
        await asyncio.sleep(0.02)


def liveness_changes(lab: Lab) -> list[tuple[str, str]]:
    """Every liveness transition of the lab's inspector from now on, as (host, new state), in order."""
    changes: list[tuple[str, str]] = []
    on_change = lab.inspector.liveness.on_change

    async def spy(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append((rec.host_id, new))
        await on_change(rec, old, new)
    lab.inspector.liveness.on_change = spy
    return changes


class Consumer:
    """A consumer holding a live subscription; ``faults`` fills as notifications arrive."""

    def __init__(self, lab: Lab, principal: str, flt: fault_pb2.SubscribeFilter | None = None) -> None:
        self.client = DoctorClient(lab.endpoint, lab.tokens[principal])
        self.flt = flt
        self.snapshot: fault_pb2.SubscribeResponse | None = None
        self.faults: list[fault_pb2.FaultNotification] = []
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> "Consumer":
        async def run() -> None:
            try:
                async for msg in self.client.subscribe_once(self.flt):
                    if msg.WhichOneof("kind") == "subscribed":
                        self.snapshot = msg.subscribed
                    else:
                        self.faults.append(msg.fault)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                self.error = exc
        self._task = asyncio.create_task(run())
        await wait_for(lambda: self.snapshot is not None or self.error is not None, 10, what="subscription")
        if self.error is not None:
            raise self.error
        return self

    def phases(self) -> list[int]:
        return [n.phase for n in self.faults]

    def of_phase(self, phase: int) -> list[fault_pb2.FaultNotification]:
        return [n for n in self.faults if n.phase == phase]

    def resource_ids(self) -> set[str]:
        return {v.virtual_resource_id for n in self.faults for v in n.virtual_resource_info}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


@pytest.fixture
async def make_lab(needs_root: None) -> AsyncIterator[Callable[..., Any]]:
    labs: list[Lab] = []
    consumers: list[Consumer] = []

    async def make(**kw: Any) -> Lab:
        lab = Lab(**kw)
        labs.append(lab)
        await lab.start()
        return lab

    async def consumer(lab: Lab, principal: str, flt: fault_pb2.SubscribeFilter | None = None) -> Consumer:
        c = await Consumer(lab, principal, flt).start()
        consumers.append(c)
        return c

    make.consumer = consumer  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for c in consumers:
            await c.close()
        for lab in labs:
            await lab.close()

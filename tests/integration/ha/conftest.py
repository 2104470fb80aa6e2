"""Fixtures for replicated inspectors: real etcd, replica processes, namespaced hosts, resuming consumers.

The etcd clusters run with fast timing (heartbeat 50 ms, election 250 ms) so
the lease TTL of 1 s the labs ask for is granted; a takeover then takes
≈ 1–1.5 s. Every process, namespace and temporary directory is removed by
the fixtures' teardown, whatever the test did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from doctor_common.api import fault_pb2
from doctor_common.auth import Principal
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from doctor_common.lab.replicated import HaLab
from inspector.ha.etcd_config import EtcdConfig, connect
from notifier.etcd_log import EtcdLog
from notifier.filters import Filter, view_notification
from tests.conftest import _unavailable, etcd_binary
from tests.etcd_cluster import EtcdCluster


def _etcd(size: int) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        _unavailable("needs Debian's etcd-server (make setup installs it)")
    with EtcdCluster(size) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def shared_etcd() -> Iterator[EtcdCluster]:
    """Three members shared by a module's tests (each lab has its own key prefix); nobody kills these."""
    yield from _etcd(3)


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    """Three members of the test's own, for killing members."""
    yield from _etcd(3)


# an incident's notices, in order: the suspicion, the confirmed power-off, the controller's completion
INCIDENT_PHASES = [fault_pb2.INCIDENT_PHASE_SUSPECTED, fault_pb2.INCIDENT_PHASE_FENCED,
                   fault_pb2.INCIDENT_PHASE_MARKED_DOWN]


def phases_of(notifications: list[fault_pb2.FaultNotification], host: str, fault_type: str) -> list[int]:
    """The phases announced for ``host``'s ``fault_type``, in log order."""
    return [n.phase for n in notifications for p in n.physical_resource_info for f in p.faults
            if p.physical_resource_id == host and f.fault_type == fault_type]


class HaConsumer:
    """A consumer configured with every replica; it reconnects, follows the leader and resumes by itself."""

    def __init__(self, lab: HaLab, principal: str, endpoints: list[str] | None = None) -> None:
        self.principal = principal
        self.client = DoctorClient(endpoints or lab.endpoints, lab.tokens[principal])
        self.snapshots: list[fault_pb2.SubscribeResponse] = []
        self.faults: list[fault_pb2.FaultNotification] = []
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> "HaConsumer":
        async def run() -> None:
            try:
                async for msg in self.client.subscribe(max_backoff_s=0.2):
                    if msg.WhichOneof("kind") == "subscribed":
                        self.snapshots.append(msg.subscribed)
                    else:
                        self.faults.append(msg.fault)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                self.error = exc
        self._task = asyncio.create_task(run())
        await wait_for(lambda: self.snapshots or self.error, 10, 0.01, f"{self.principal}'s subscription")
        if self.error is not None:
            raise self.error
        return self

    @property
    def sequences(self) -> list[int]:
        return [n.sequence for n in self.faults]

    def done(self) -> bool:
        """An incident's final notice (the controller's completion) has arrived."""
        return any(n.phase == fault_pb2.INCIDENT_PHASE_MARKED_DOWN for n in self.faults)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


async def read_log(lab: HaLab) -> list[fault_pb2.FaultNotification]:
    """Every notification in the lab's etcd log, read directly from etcd."""
    async with connect(EtcdConfig(endpoints=tuple(lab.etcd_endpoints), prefix=lab.prefix, call_timeout_s=2.0)) as c:
        elog = EtcdLog(c, lab.prefix)
        return await elog.read(0, await elog.load())


async def keys_under(lab: HaLab, sub: str) -> list[str]:
    async with connect(EtcdConfig(endpoints=tuple(lab.etcd_endpoints), prefix=lab.prefix, call_timeout_s=2.0)) as c:
        r = await c.get_prefix(f"{lab.prefix}/{sub}/".encode())
        return sorted(kv.key.decode()[len(lab.prefix) + 1:] for kv in r)


def expected_for(lab: HaLab, consumer: HaConsumer, log: list[fault_pb2.FaultNotification]) -> list[int]:
    """The sequences ``consumer`` must receive: every logged notification after its first snapshot it may see."""
    principal = Principal(consumer.principal, None if consumer.principal == "admin" else consumer.principal,
                          consumer.principal == "admin")
    start = consumer.snapshots[0].last_sequence
    flt = Filter.from_proto(fault_pb2.SubscribeFilter())
    return [n.sequence for n in log if n.sequence > start and view_notification(principal, flt, n) is not None]


async def assert_delivered_exactly_once(lab: HaLab, consumers: list[HaConsumer], timeout: float = 10.0) -> None:
    """Each consumer receives, in order, exactly the logged notifications it may see: no gap, no duplicate."""
    log = await read_log(lab)
    for c in consumers:
        want = expected_for(lab, c, log)
        await wait_for(lambda c=c, want=want: len(c.sequences) >= len(want), timeout, 0.01,
                       f"{c.principal} to receive sequences {want} (has {c.sequences})")
        assert c.sequences == want, f"{c.principal}: received {c.sequences}, the log holds {want} for it"
        assert c.error is None


@pytest.fixture
async def ha() -> AsyncIterator[Callable[..., Any]]:
    """``await ha(etcd, **HaLab kwargs)`` starts a lab; ``await ha.consumer(lab, principal)`` subscribes."""
    labs: list[HaLab] = []
    consumers: list[HaConsumer] = []

    async def make(etcd: EtcdCluster, first_env: dict[str, str] | None = None, agents: bool = True,
                   **kw: Any) -> HaLab:
        lab = HaLab(etcd.endpoints, **kw)
        labs.append(lab)
        await lab.start(agents=agents, first_env=first_env)
        return lab

    async def consumer(lab: HaLab, principal: str, endpoints: list[str] | None = None) -> HaConsumer:
        c = HaConsumer(lab, principal, endpoints)
        consumers.append(c)
        return await c.start()

    make.consumer = consumer  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for c in consumers:
            await c.close()
        for lab in labs:
            await lab.close()

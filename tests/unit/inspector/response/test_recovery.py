"""An incident's life with the real responder, recovery, guard and root causes, and a BMC and controller that
only count: no path sends a power-off it should not, and no incident is left stuck."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from controller_adapter.base import Bmc, Host
from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from doctor_common.etcd_guard import EtcdUnavailable, NotLeader
from doctor_common.lab.cloud import wait_for
from inspector.ha.etcd_store import Incident
from inspector.response.alarms import AlarmStore, alarm_from_json, alarm_to_json
from inspector.response.correlate import ResourceMap
from inspector.response.durable import NullDurable
from inspector.response.fencing import FenceResult
from inspector.response.fleet_guard import FleetGuard, GuardConfig, HostView
from inspector.response.policy import default_policy
from inspector.response.recovery import RetryPolicy
from inspector.response.responder import Responder
from inspector.response.trigger import Trigger
from notifier.filters import Filter
from notifier.log import MemoryLog
from notifier.registry import Registry
from notifier.server import Publisher

P = fault_pb2.IncidentPhase


class Bmcs:
    """Every host's power, and what was sent to it."""

    timeout_s = 1.0

    def __init__(self) -> None:
        self.power: dict[str, str] = {}
        self.sent: list[str] = []

    async def power_state(self, bmc: Bmc, timeout: float | None = None) -> str:
        return self.power.get(bmc.address, "on")

    async def power_off(self, host: str, bmc: Bmc | None, *, deadline: float | None = None) -> FenceResult:
        if self.power.get(host, "on") == "off":
            return FenceResult(True, already_off=True)
        self.sent.append(host)
        self.power[host] = "off"
        return FenceResult(True)

    async def confirm_off(self, host: str, bmc: Bmc | None, *, deadline: float | None = None) -> FenceResult:
        return FenceResult(self.power.get(host) == "off")


class Controller:
    async def force_down(self, host: str, down: bool = True) -> None:
        pass

    async def reset_servers_state(self, ids: list[str], state: Any) -> dict[str, Any]:
        return {}

    async def set_ports_data_plane_status(self, ids: list[str], status: str) -> dict[str, Any]:
        return {}


class Journal(NullDurable):
    """Standalone's journal, made to fail its first write of a step when told to; it keeps the incidents opened."""

    def __init__(self) -> None:
        self.fail_next_step = False
        self.opened: dict[str, dict[str, Any]] = {}
        self.steps: set[tuple[str, str]] = set()  # (incident, step) recorded with a log append

    def publish_ops(self, alarm: Any, *, cleared: bool = False, step: Any = None, detail: Any = None) -> list[Any]:
        return [("step", alarm.id, str(step))] if step is not None else []

    async def recorded(self, incident_id: str, step: Any) -> bool:
        return (incident_id, str(step)) in self.steps

    async def open_incident(self, alarm: Any, actions: Any) -> None:
        self.opened[alarm.id] = {"alarm_id": alarm.id, "host": alarm.host, "actions": sorted(actions)}

    async def step(self, incident_id: str, step: Any, detail: dict[str, Any]) -> None:
        if self.fail_next_step:
            self.fail_next_step = False
            raise EtcdUnavailable("etcd did not answer in time")


class Log(MemoryLog):
    """The log in memory, made to refuse its next append when told to (etcd past its deadline, a term lost)."""

    def __init__(self) -> None:
        super().__init__(10_000)
        self.refuse_next: Exception | None = None
        self.raise_after_next: Exception | None = None  # applied, then raised (an answer lost past the deadline)
        self.journal: Journal | None = None

    async def append(self, notification: fault_pb2.FaultNotification, *, also: Any = ()) -> int:
        refused, self.refuse_next = self.refuse_next, None
        if refused is not None:
            raise refused
        sequence = await super().append(notification)
        for op in also:  # the journal's step goes in the same transaction as the append
            if self.journal is not None and op[0] == "step":
                self.journal.steps.add((op[1], op[2]))
        late, self.raise_after_next = self.raise_after_next, None
        if late is not None:
            raise late
        return sequence


class World:
    def __init__(self, spec: dict[str, tuple[str, str]], cfg: GuardConfig = GuardConfig(settle_s=0.0,
                                                                                      silence_settle_s=0.0)) -> None:
        self.resources = ResourceMap(Controller())  # type: ignore[arg-type]
        self.resources.hosts = {h: Host(h, zone=z, switch=s, bmc=Bmc(h)) for h, (z, s) in spec.items()}
        self.quiet: set[str] = set()
        self.alarms = AlarmStore()
        self.log = Log()
        self.bmcs = Bmcs()
        self.journal = Journal()
        self.log.journal = self.journal
        self.guard = FleetGuard(cfg, lambda: self.resources.hosts, self.view)
        self.r = Responder(default_policy(), self.resources, Controller(), self.bmcs, self.alarms,  # type: ignore[arg-type]
                           Publisher(self.log, Registry()), durable=self.journal, guard=self.guard,
                           retry=RetryPolicy(0.05, 0.1), rejoin_s=0.2)

    def view(self, host: str) -> HostView:
        return HostView(True, host in self.quiet)

    def phase(self, host: str) -> int | None:
        inc = self.alarms.incident(host)
        return inc.phase if inc else None

    async def fault(self, host: str, fault_type: str, component: str) -> None:
        await self.r.fault(Trigger(host, fault_type, common_pb2.SEVERITY_CRITICAL, component=component))

    def phases_logged(self, host: str) -> list[int]:
        return [n.phase for n in self.log._entries for p in n.physical_resource_info if p.physical_resource_id == host]


async def test_power_off_evidence_is_confirmed_never_sent() -> None:
    """The BMC said off while the agent was away; by the time the incident is judged (the budget made it wait)
    the host is on again: the suspicion is withdrawn and nothing is sent to the BMC."""
    w = World({f"c{i}": ("az1", "") for i in range(6)},
              GuardConfig(settle_s=0.0, silence_settle_s=0.0, fence_burst=1, fence_rate_per_minute=600.0))
    w.bmcs.power.update({"c1": "off", "c2": "off"})
    await w.fault("c1", "compute.host.power.off", "power")
    await w.fault("c2", "compute.host.power.off", "power")
    assert w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN and w.phase("c2") == P.INCIDENT_PHASE_SUSPECTED
    w.bmcs.power["c2"] = "on"  # powered back on before its turn came
    await wait_for(lambda: w.phase("c2") is None, 5, what="c2 withdrawn")
    assert w.bmcs.sent == [] and w.phases_logged("c2")[-1] == P.INCIDENT_PHASE_WITHDRAWN


async def test_a_journal_failure_after_the_power_off_does_not_leave_the_incident_stuck() -> None:
    """etcd fails the write that records the fence: the incident is tried again, and ends marked down with its
    notices, without a second power-off."""
    w = World({f"c{i}": ("az1", "") for i in range(6)})
    w.journal.fail_next_step = True
    await w.fault("c1", "compute.host.nic.down", "nic:eth0")
    await wait_for(lambda: w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN, 5, what="the incident finished")
    assert w.bmcs.sent == ["c1"]
    assert w.phases_logged("c1") == [P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED, P.INCIDENT_PHASE_MARKED_DOWN]


async def test_a_new_leader_keeps_a_reported_switch_down_and_its_host_held() -> None:
    """A monitor reported the switch down and a host behind it lost its link: held. The next leader reads the
    alarms the previous one left (the switch's word among them) and holds it too; nothing is powered off."""
    spec = {"a": ("az1", "tor1"), **{f"x{i}": ("az1", f"tor{i + 2}") for i in range(6)}}
    old = World(spec)
    old.guard.switch_reported("tor1", True, "all ports down")
    await old.r.causes.sweep()
    await old.fault("a", "compute.host.nic.down", "nic:eth0")
    assert old.phase("a") == P.INCIDENT_PHASE_HELD

    new = World(spec)
    new.alarms.replace([alarm_from_json(alarm_to_json(a), lambda _i: None, lambda _i: None) for a in old.alarms])
    new.guard.reset()
    new.r.causes.took_over()
    inc = new.alarms.incident("a")
    assert inc is not None
    await new.r.recovery.resume(Incident(inc.id, {"alarm_id": inc.id, "actions": []}, ()))
    await new.r.causes.sweep()
    # the sweep after the new leader's grace is the one that would release a cause it had forgotten
    await wait_for(lambda: time.monotonic() >= new.r.causes._quiet_until, 2, what="the rejoin grace")
    assert await new.r.causes.sweep() == []
    await wait_for(lambda: not new.r.causes.pending(inc.id), 2, what="no judgement under way")
    assert new.phase("a") == P.INCIDENT_PHASE_HELD and new.bmcs.sent == []
    assert "switch:tor1" in new.r.causes.roots()


async def test_a_suspicion_nothing_judges_is_judged_by_the_sweep() -> None:
    """Whatever dropped a suspicion's judgement (a crashed task), the sweep judges it again."""
    w = World({f"c{i}": ("az1", "") for i in range(6)})
    w.quiet.add("c1")
    alarm = await w.r.recovery.suspect(Trigger("c1", "compute.host.unreachable", common_pb2.SEVERITY_CRITICAL,
                                               component="agent"), default_policy().rules[1])
    w.r.recovery._deciding.discard(alarm.id)  # as if its task had died
    await w.r.causes.sweep()
    await wait_for(lambda: w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN, 5, what="judged by the sweep")


async def test_later_faults_of_a_handled_host_are_recorded_as_derived_and_announced_once() -> None:
    """The host is fenced for its NIC; its hypervisor check then fails too (twice): the incident records it as
    a derived fault and announces that once; no second incident, no second power-off."""
    w = World({f"c{i}": ("az1", "") for i in range(6)})
    await w.fault("c1", "compute.host.nic.down", "nic:eth0")
    assert w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN
    before = len(w.log._entries)
    for _ in range(2):
        await w.fault("c1", "compute.hypervisor.down", "hypervisor:libvirtd")
    inc = w.alarms.incident("c1")
    assert inc is not None and "correlated.compute.hypervisor.down" in inc.fault.fault_details
    assert len(w.log._entries) == before + 1 and len(w.alarms.on_host("c1")) == 1 and w.bmcs.sent == ["c1"]


async def test_a_suspicion_journalled_but_never_announced_is_announced_by_the_next_leader() -> None:
    """The leader journals a new incident, then loses its term before the suspicion reaches the log. The next
    leader finishes the incident: the owners hear the suspicion first, then the power-off and the marking down,
    each once, and the host is powered off once."""
    spec = {f"c{i}": ("az1", "") for i in range(6)}
    old = World(spec)
    old.log.refuse_next = NotLeader("leadership (token 2) was lost: the leader key was deleted")
    with pytest.raises(NotLeader):  # the suspicion's append refused: the response stops
        await old.fault("c1", "compute.host.nic.down", "nic:eth0")
    inc = old.alarms.incident("c1")
    assert inc is not None and inc.id in old.journal.opened and old.log.last_sequence == 0 and old.bmcs.sent == []

    new = World(spec)
    new.alarms.replace([alarm_from_json(alarm_to_json(a), lambda _i: None, lambda _i: None) for a in old.alarms])
    new.guard.reset()
    new.r.causes.took_over()
    await new.r.recovery.resume(Incident(inc.id, old.journal.opened[inc.id], ()))  # opened, no step recorded
    await wait_for(lambda: new.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN, 5, what="the incident finished")
    assert new.phases_logged("c1") == [P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED,
                                       P.INCIDENT_PHASE_MARKED_DOWN]
    assert new.bmcs.sent == ["c1"]


async def test_a_suspicion_whose_notice_failed_is_announced_before_it_is_judged() -> None:
    """etcd refuses the suspicion's append past its deadline while the leader keeps its term: the sweep that
    judges the suspicion again tells the owners of it first, then fences."""
    w = World({f"c{i}": ("az1", "") for i in range(6)})
    w.log.refuse_next = EtcdUnavailable("etcd did not answer in time")
    with pytest.raises(EtcdUnavailable):
        await w.fault("c1", "compute.host.nic.down", "nic:eth0")
    assert w.phase("c1") == P.INCIDENT_PHASE_SUSPECTED and w.log.last_sequence == 0
    await w.r.causes.sweep()
    await wait_for(lambda: w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN, 5, what="judged by the sweep")
    assert w.phases_logged("c1") == [P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED,
                                     P.INCIDENT_PHASE_MARKED_DOWN]
    assert w.bmcs.sent == ["c1"]


async def test_a_suspicion_whose_notice_was_applied_but_raised_is_not_announced_twice() -> None:
    """etcd applies the suspicion's append but its answer comes past the deadline (the append raises) while the
    leader keeps its term: the journal says the notice went out, so the sweep judges and fences without telling
    the owners "suspected" a second time."""
    w = World({f"c{i}": ("az1", "") for i in range(6)})
    live = w.r.publisher.registry.add(Principal("admin", admin=True), Filter(), 0)
    w.log.raise_after_next = EtcdUnavailable("etcd did not answer in time")
    with pytest.raises(EtcdUnavailable):
        await w.fault("c1", "compute.host.nic.down", "nic:eth0")
    assert w.phases_logged("c1") == [P.INCIDENT_PHASE_SUSPECTED]
    await w.r.causes.sweep()
    await wait_for(lambda: w.phase("c1") == P.INCIDENT_PHASE_MARKED_DOWN, 5, what="judged by the sweep")
    assert w.phases_logged("c1") == [P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED,
                                     P.INCIDENT_PHASE_MARKED_DOWN]
    assert w.bmcs.sent == ["c1"]
    # the leader's live subscriber got the suspicion too (read back from the log), once and first
    got = []
    while (item := live.take_nowait()) is not None:
        got.append(item.sequence)
    assert got == [1, 2, 3]

"""The fleet guard's judgement: silence against the fleet, a switch's hosts together, a zone's fencing budget."""

from __future__ import annotations

import pytest

from controller_adapter.base import Host
from inspector.response.fleet_guard import FleetGuard, GuardConfig, HostView, Verdict, view_of


class Fleet:
    """Hosts with a zone and a switch; which are watched and which are quiet; a clock the test moves."""

    def __init__(self, spec: dict[str, tuple[str, str]], cfg: GuardConfig = GuardConfig()) -> None:
        self.inventory = {h: Host(h, zone=z, switch=s) for h, (z, s) in spec.items()}
        self.quiet: set[str] = set()
        self.unwatched: set[str] = set()
        self.lagging = False
        self.now = 100.0
        self.guard = FleetGuard(cfg, lambda: self.inventory, self.view, lambda: self.now, lambda: self.lagging)

    def view(self, host: str) -> HostView:
        return HostView(host not in self.unwatched, host in self.quiet)

    def silent(self, *hosts: str) -> None:
        self.quiet.update(hosts)
        self.now += 1  # past the guard's 10 ms count cache


def rack(n: int, zone: str = "az1", switch: str = "", prefix: str = "c") -> dict[str, tuple[str, str]]:
    return {f"{prefix}{i}": (zone, switch) for i in range(1, n + 1)}


def test_one_silent_host_among_healthy_ones_is_fenced() -> None:
    """1 of 6 silent: nothing shared explains it, the zone's budget allows it."""
    f = Fleet(rack(6))
    f.silent("c1")
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


@pytest.mark.parametrize("silent", [6, 4])
def test_most_of_the_fleet_silent_together_holds_every_fence(silent: int) -> None:
    """All 6, or 4 of 6 (67 % > 55 %), silent at once: the inspector is likelier isolated than they dead."""
    f = Fleet(rack(6))
    f.silent(*[f"c{i}" for i in range(1, silent + 1)])
    for i in range(1, silent + 1):
        j = f.guard.judge(f"c{i}", silence=True)
        assert j.verdict is Verdict.HOLD and j.cause == "fleet", j
    assert f.guard.fences_allowed == 0


def test_more_than_n_silent_holds_even_when_the_share_is_small() -> None:
    """4 silent of 100 (4 %) across zones: more than max_silent_hosts (3) at once is a shared cause."""
    spec = {**rack(50, "az1"), **rack(50, "az2", prefix="d")}
    f = Fleet(spec)
    f.silent("c1", "c2", "d1", "d2")
    assert f.guard.judge("c1", silence=True).cause == "fleet"
    f.quiet = {"c1", "d1", "d2"}
    f.now += 1
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


def test_a_partitioned_zone_holds_its_own_hosts_only() -> None:
    """A zone of 5 loses 3 (60 %) while the fleet of 15 is at 20 %: the zone holds; the other zones do not."""
    spec = {**rack(5, "az1"), **rack(10, "az2", prefix="d")}
    f = Fleet(spec)
    f.silent("c1", "c2", "c3")
    j = f.guard.judge("c1", silence=True)
    assert j.verdict is Verdict.HOLD and j.cause == "zone:az1"
    f.silent("d1")
    assert f.guard.judge("d1", silence=True).verdict is Verdict.FENCE


def test_small_zones_are_judged_with_the_fleet() -> None:
    """A zone of 2 with one host silent is not 'partitioned' (fewer than min_zone_hosts): that host is fenced."""
    spec = {**rack(2, "az1"), **rack(6, "az2", prefix="d")}
    f = Fleet(spec)
    f.silent("c1")
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


def test_links_lost_behind_one_switch_point_at_the_switch() -> None:
    """Two hosts of one switch report their link down within the settle window: the switch is the cause and
    neither is fenced; a host of another switch losing its link alone is."""
    spec = {**rack(6, switch="tor-a"), **rack(3, switch="tor-b", prefix="d")}
    f = Fleet(spec)
    f.guard.link_lost("c1")
    assert f.guard.cause_of("c1", silence=False) is None
    f.guard.link_lost("c2")
    j = f.guard.judge("c1", silence=False)
    assert j.verdict is Verdict.HOLD and j.cause == "switch:tor-a" and "2 of 6" in j.reason
    f.guard.link_lost("d1")
    assert f.guard.judge("d1", silence=False).verdict is Verdict.FENCE


def test_a_policy_may_fence_under_a_shared_cause_still_within_the_budget() -> None:
    """fence_shared: the switch's hosts are fenced, two at once, then at the zone's rate."""
    f = Fleet(rack(6, switch="tor-a"))
    for h in ("c1", "c2", "c3"):
        f.guard.link_lost(h)
    verdicts = [f.guard.judge(h, silence=False, fence_shared=True) for h in ("c1", "c2", "c3")]
    assert [v.verdict for v in verdicts] == [Verdict.FENCE, Verdict.FENCE, Verdict.WAIT]
    assert verdicts[2].retry_at == pytest.approx(f.now + 10.0)  # 6 per minute
    f.now = verdicts[2].retry_at
    assert f.guard.judge("c3", silence=False, fence_shared=True).verdict is Verdict.FENCE


def test_positive_evidence_is_rate_limited_per_zone() -> None:
    """Three hosts of one zone with their own NIC down and no switch known: two fenced at once, the third later;
    another zone has its own budget."""
    spec = {**rack(6, "az1"), **rack(6, "az2", prefix="d")}
    f = Fleet(spec)
    assert [f.guard.judge(h, silence=False).verdict for h in ("c1", "c2", "c3", "d1")] == [
        Verdict.FENCE, Verdict.FENCE, Verdict.WAIT, Verdict.FENCE]


def test_a_host_heard_again_is_withdrawn() -> None:
    """Suspected for silence, then heard before the judgement: the suspicion is withdrawn."""
    f = Fleet(rack(6))
    assert f.guard.judge("c1", silence=True).verdict is Verdict.WITHDRAW


def test_hosts_not_watched_do_not_count() -> None:
    """Hosts whose agents are not expected to speak (never connected, stopped, fenced) are not in the shares:
    3 watched, 1 silent (33 %) is fenced though 5 of 8 hosts are not heard."""
    f = Fleet(rack(8))
    f.unwatched = {"c4", "c5", "c6", "c7", "c8"}
    f.silent("c1")
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


def test_the_guard_can_be_switched_off() -> None:
    """enabled = false (an operator's override): every suspicion is fenced at once, without a budget."""
    f = Fleet(rack(6), GuardConfig(enabled=False))
    f.silent(*[f"c{i}" for i in range(1, 7)])
    assert {f.guard.judge(f"c{i}", silence=True).verdict for i in range(1, 7)} == {Verdict.FENCE}


def test_the_fleet_has_a_budget_of_its_own() -> None:
    """Evidence from hosts of many zones at once: each zone could fence two, the fleet fences four at once,
    then twelve a minute."""
    spec = {f"z{z}h{i}": (f"az{z}", "") for z in range(6) for i in range(2)}
    f = Fleet(spec)
    verdicts = [f.guard.judge(h, silence=False).verdict for h in sorted(spec)]
    assert verdicts.count(Verdict.FENCE) == 4 and verdicts.count(Verdict.WAIT) == 8
    waits = [f.guard.judge(h, silence=False) for h in ("z5h0",)]
    assert "fleet" in waits[0].reason and waits[0].retry_at == pytest.approx(f.now + 5.0)


def test_only_positive_liveness_withdraws_a_silence() -> None:
    """A host taken out of the count (disabled, judged already) is not 'heard': its silence is still judged."""
    f = Fleet(rack(6))
    f.quiet.add("c1")
    f.unwatched.add("c1")
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


def test_a_lagging_inspector_fences_nothing() -> None:
    """While the inspector is behind, every suspicion waits: silence it could not observe is no evidence."""
    f = Fleet(rack(6))
    f.silent("c1")
    f.lagging = True
    assert f.guard.judge("c1", silence=True).verdict is Verdict.WAIT
    assert f.guard.judge("c2", silence=False).verdict is Verdict.WAIT
    f.lagging = False
    assert f.guard.judge("c1", silence=True).verdict is Verdict.FENCE


def test_links_count_per_component_and_only_for_watched_hosts() -> None:
    """A host's link is lost until each component that reported it is back; a fenced (unwatched) host's port
    reported down by a monitor does not make its healthy peer's loss a switch failure."""
    f = Fleet(rack(4, switch="tor-a"))
    f.guard.link_lost("c1", "nic:eth0")
    f.guard.link_lost("c1", "nic:eth1")
    f.guard.link_back("c1", "nic:eth0")
    f.guard.link_lost("c2", "nic:eth0")
    assert [c.key for c in f.guard.causes()] == ["switch:tor-a"]
    f.guard.link_back("c1", "nic:eth1")
    f.now += 1
    assert f.guard.causes() == []
    f.unwatched.add("c3")
    f.guard.link_lost("c3", "monitor:port")
    f.now += 1
    assert f.guard.causes() == [] and f.guard.judge("c2", silence=False).verdict is Verdict.FENCE


def test_a_whole_fleet_silent_is_the_inspectors_isolation_not_its_switches() -> None:
    """Every host of two racks silent: the broadest cause explains silence (the fleet), though each switch would
    count too; a link reported down is explained by its switch only."""
    f = Fleet({**rack(3, switch="tor-a"), **rack(3, switch="tor-b", prefix="d")})
    f.silent("c1", "c2", "c3", "d1", "d2", "d3")
    assert f.guard.judge("c1", silence=True).cause == "fleet"
    assert {c.key for c in f.guard.causes()} == {"switch:tor-a", "switch:tor-b", "fleet"}


def test_only_a_link_fault_with_switch_peers_waits_to_be_judged() -> None:
    """A link fault waits for a failing switch's other hosts to report, unless the host is alone behind its
    switch or has none known; silence always waits a heartbeat, for a spreading silence to show itself."""
    f = Fleet({**rack(3, switch="tor-a"), "lone": ("az1", "tor-b"), "bare": ("az1", "")})
    assert f.guard.settle_for("c1", silence=False) == GuardConfig().settle_s
    assert f.guard.settle_for("bare", silence=True) == GuardConfig().silence_settle_s
    assert f.guard.settle_for("lone", silence=False) == 0.0
    assert f.guard.settle_for("bare", silence=False) == 0.0


def test_a_switch_its_monitor_reports_down_explains_even_one_host() -> None:
    """A monitor reports the switch down: it is a cause at once, and a single host behind it losing its link is
    held; reported up again, that host alone is judged on its own."""
    f = Fleet({**rack(4, switch="tor-a"), **rack(2, switch="tor-b", prefix="d")})
    assert f.guard.is_switch("tor-a") and not f.guard.is_switch("c1")
    f.guard.switch_reported("tor-a", True, "ports down")
    [cause] = f.guard.causes()
    assert cause.key == "switch:tor-a" and cause.hosts == () and "reported down (ports down)" in cause.describe()
    f.guard.link_lost("c1")
    assert f.guard.judge("c1", silence=False).verdict is Verdict.HOLD
    f.guard.switch_reported("tor-a", False)
    assert f.guard.judge("c1", silence=False).verdict is Verdict.FENCE


@pytest.mark.parametrize("liveness, silence, kw, expected", [
    ("up", 0.1, {}, (True, False, True)),                                    # healthy
    ("up", 1.2, {}, (True, True, False)),                                    # silent, not declared yet: quiet
    ("unreachable", 2.0, {}, (True, True, False)),                           # declared
    ("unreachable", 90.0, {}, (False, False, False)),                        # an earlier event's: not counted
    ("unreachable", 90.0, {"held": True}, (True, True, False)),              # still held: still counted
    ("unreachable", 2.0, {"judged": True}, (False, False, False)),           # fence failing, retried: judged
    ("up", 0.1, {"out_of_service": True}, (False, False, True)),             # disabled, yet heard
    ("agent_down", 0.1, {}, (False, False, False)),                          # agent died: not expected to speak
])
def test_how_the_guard_counts_a_host(liveness: str, silence: float, kw: dict[str, bool],
                                      expected: tuple[bool, bool, bool]) -> None:
    """Long-dead or already-judged hosts never make a later lone death look like a shared cause; only a host up
    and heard withdraws a silence."""
    args = {"out_of_service": False, "judged": False, "held": False, **kw}
    v = view_of(liveness, silence, 1.0, 60.0, **args)
    assert (v.watched, v.quiet, v.heard) == expected


def test_a_fleet_with_nothing_quiet_is_not_counted_host_by_host() -> None:
    """Every cause needs a quiet host, a lost link or a switch reported down. With the inspector's word that no
    host may be quiet (a scan of its liveness records), no host's view is built; a lost link is still counted,
    and so is a quiet host once the word changes."""
    f = Fleet(rack(6, switch="tor-1"))
    viewed: list[str] = []

    def view(host: str) -> HostView:
        viewed.append(host)
        return f.view(host)
    maybe = [False]
    f.guard.view, f.guard.may_be_quiet = view, lambda: maybe[0]
    assert f.guard.causes() == [] and viewed == []
    for h in ("c1", "c2", "c3"):
        f.guard.link_lost(h, "nic:eth0")
    f.now += 1
    assert [c.key for c in f.guard.causes()] == ["switch:tor-1"] and viewed
    for h in ("c1", "c2", "c3"):
        f.guard.link_back(h)
    viewed.clear()
    f.now += 1
    assert f.guard.causes() == [] and viewed == []
    maybe[0] = True
    f.silent("c1", "c2", "c3", "c4", "c5", "c6")
    assert [c.key for c in f.guard.causes()][-1] == "fleet"

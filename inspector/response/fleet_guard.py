"""Judge the fleet, not one host at a time: whether a suspected host may be fenced now (DESIGN principle 9).

Silence is absence of evidence. When many hosts fall silent together the
likelier fault is on the inspector's side or in the network between, so the
guard *holds*: none of them is fenced for silence while

* more than ``max_silent_share`` of the fleet's watched hosts are quiet, or
  more than ``max_silent_hosts`` of them (the inspector is isolated), or
* more than ``max_silent_share`` of a zone's watched hosts are quiet, in a
  zone of at least ``min_zone_hosts`` (the zone is partitioned).

Hosts behind one switch that lose sight together — quiet, or reporting their
own link down — point at the switch: at least ``switch_min_hosts`` of them
make it the root cause, and none of them is fenced for it unless a policy
rule for the switch's fault type fences.

Positive evidence (an agent's own NIC down, power lost, a monitor's event) is
acted on, but no zone fences more than ``fence_burst`` hosts at once and
``fence_rate_per_minute`` after that (a token bucket per zone).

A host is *watched* while its agent is expected to speak (liveness up or
unreachable) and it is not already fenced, judged on its own (its fence
failing and retried), or taken out of service; it is *quiet* when declared
unreachable or silent for longer than ``quiet_after_s`` (a healthy agent
speaks every heartbeat interval, so hosts silenced together are all quiet by
the time the first crosses the liveness timeout). A host quiet for longer
than ``window_s`` that no cause holds went quiet in an earlier event: it no
longer counts (``inspector/core.py`` builds each host's view).

Silence is judged ``silence_settle_s`` after it is declared, so that a
silence spreading over a few heartbeats shows its pattern first; and no more
than ``fleet_fence_burst`` hosts are fenced at once in the whole fleet, then
``fleet_fence_rate_per_minute``, whatever the zones. While the inspector is
behind (``southbound/lag.py``) nothing is judged fit to fence.

Defaults follow the anchors: Kubernetes' node lifecycle controller calls a
zone with >= 55 % of its nodes not ready unhealthy and stops evicting from it
when it is small, and stops everything when every zone is disrupted;
medik8s NHC's ``minHealthy`` is 51 %; Kubernetes evicts at 0.1 node/s
(6/min) per zone. Pacemaker does not fence without quorum.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controller_adapter.base import Host


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = True
    max_silent_share: float = 0.55     # Kubernetes' unhealthy-zone threshold
    max_silent_hosts: int = 3          # more quiet hosts than this at once: a shared cause, whatever the share
    min_zone_hosts: int = 3            # smaller zones are judged with the fleet only
    switch_min_hosts: int = 2          # this many hosts of one switch lost together: the switch is the cause
    settle_s: float = 0.15             # a link fault waits this long for its switch peers' (none without peers)
    silence_settle_s: float = 0.5      # silence waits this long (a heartbeat) to show whether it spreads
    window_s: float = 60.0             # quiet longer than this and held by nothing: an earlier event's, not counted
    fence_rate_per_minute: float = 6.0  # per zone, after the burst (Kubernetes: 0.1 node/s)
    fence_burst: int = 2
    fleet_fence_rate_per_minute: float = 12.0  # the whole fleet, after its burst
    fleet_fence_burst: int = 4
    link_fault_types: tuple[str, ...] = ("compute.host.nic.down",)


class Verdict(enum.Enum):
    FENCE = "fence"          # go ahead (a token of the zone's budget is taken)
    HOLD = "hold"            # a shared cause: keep the suspicion, fence nothing, judge again when it clears
    WAIT = "wait"            # the zone's fencing budget is spent: judge again at ``retry_at``
    WITHDRAW = "withdraw"    # the host is heard again: the suspicion is withdrawn


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""
    cause: str = ""               # the shared cause's key: "fleet", "zone:<z>", "switch:<s>"
    retry_at: float = 0.0         # monotonic, for WAIT


@dataclass(frozen=True)
class Cause:
    """A shared cause that holds: what it is, and the hosts it holds."""

    key: str                     # "fleet", "zone:az1", "switch:tor-3"
    resource: str                # the physical resource at the root ("inspector", the zone, the switch)
    kind: str                    # "inspector", "zone", "switch"
    hosts: tuple[str, ...]       # the lost hosts it explains
    watched: int                 # how many hosts it covers that are watched
    reported: str = ""           # a switch's own fault, as its monitor reported it

    def describe(self) -> str:
        if self.reported:
            return (f"switch {self.resource} reported down ({self.reported}); lost {len(self.hosts)} of "
                    f"{self.watched} watched hosts behind it")
        what = {"inspector": "the inspector lost sight of", "zone": f"zone {self.resource}: lost sight of",
                "switch": f"switch {self.resource}: lost"}[self.kind]
        return f"{what} {len(self.hosts)} of {self.watched} watched hosts"


class HostView:
    """What the guard needs to know of one host's liveness (``inspector/core.py`` builds it).

    ``heard``: its agent is up and spoke recently — positive evidence it is alive (not merely unwatched)."""

    __slots__ = ("watched", "quiet", "heard")

    def __init__(self, watched: bool, quiet: bool, heard: bool | None = None) -> None:
        self.watched, self.quiet = watched, quiet
        self.heard = (watched and not quiet) if heard is None else heard


def view_of(liveness: str, silence_s: float, quiet_after_s: float, window_s: float, *, out_of_service: bool,
            judged: bool, held: bool) -> HostView:
    """A host as the guard counts it, from its liveness (``up``/``unreachable``/...) and silence so far.

    Not watched: its agent is not expected to speak, the host is out of service (forced down, disabled), or it
    was judged on its own already (fenced, fencing, its fence failing and retried). Quiet longer than
    ``window_s`` and ``held`` by no cause: it went quiet in an earlier event and no longer counts. Heard: up
    and recently heard — positive evidence, unlike merely not being watched."""
    if liveness not in ("up", "unreachable"):
        return HostView(False, False, False)
    heard = liveness == "up" and silence_s <= quiet_after_s
    if out_of_service or judged:
        return HostView(False, False, heard)
    quiet = liveness == "unreachable" or silence_s > quiet_after_s
    if quiet and silence_s > window_s and not held:
        return HostView(False, False, False)
    return HostView(True, quiet, heard)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class FleetGuard:
    config: GuardConfig
    hosts: Callable[[], dict[str, Host]]                 # the inventory (zone, switch)
    view: Callable[[str], HostView]                      # each host's liveness now
    clock: Callable[[], float] = time.monotonic
    behind: Callable[[], bool] = lambda: False           # the inspector lags: judge nothing fit to fence
    # may any host be quiet now? A cheap superset of ``view(h).quiet`` over the fleet: False spares the count
    may_be_quiet: Callable[[], bool] = lambda: True
    _links_lost: dict[str, set[str]] = field(default_factory=dict)   # host -> its components reporting link loss
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _cached: tuple[float, list[Cause]] | None = None  # a mass event judges thousands of hosts against one count
    _groups: tuple[int, dict[str, list[str]], dict[str, list[str]]] | None = None  # (inventory id, switches, zones)
    _switches_down: dict[str, str] = field(default_factory=dict)  # switch -> its monitor's word
    fences_allowed: int = 0
    holds: int = 0

    # -- evidence kept here --------------------------------------------------------------------

    def is_link_fault(self, fault_type: str) -> bool:
        return fault_type in self.config.link_fault_types

    def link_lost(self, host: str, component: str = "") -> None:
        self._links_lost.setdefault(host, set()).add(component)
        self._cached = None

    def link_back(self, host: str, component: str | None = None) -> None:
        """A component's link is back (``None``: every link of the host, e.g. its incident closed)."""
        comps = self._links_lost.get(host)
        if comps is None:
            return
        if component is None:
            comps.clear()
        else:
            comps.discard(component)
        if not comps:
            del self._links_lost[host]
        self._cached = None

    def reset(self) -> None:
        """A new term (or none): evidence is rebuilt from what the new leader reads and hears."""
        self._links_lost.clear()
        self._switches_down.clear()
        self._cached = None

    def is_switch(self, name: str) -> bool:
        """A switch some host of the inventory is behind (a physical resource with faults of its own)."""
        return bool(name) and name in self._switch_counts()

    def _switch_counts(self) -> dict[str, list[str]]:
        return self._grouped(self.hosts())[0]

    def _grouped(self, inventory: dict[str, Host]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(switch -> hosts, zone -> hosts), counted again only when the inventory is replaced (a refresh)."""
        if self._groups is None or self._groups[0] != id(inventory):
            self._groups = (id(inventory), _group(inventory, "switch"), _group(inventory, "zone"))
        return self._groups[1], self._groups[2]

    def switch_reported(self, switch: str, down: bool, description: str = "") -> None:
        """A monitor's word on a switch: down, it explains any of its hosts' lost sight; up, it no longer does."""
        if down:
            self._switches_down[switch] = description or "down"
        else:
            self._switches_down.pop(switch, None)
        self._cached = None

    def forget(self, host: str) -> None:
        """The host is fenced or out of service: it no longer counts."""
        self._links_lost.pop(host, None)
        self._cached = None

    def settle_for(self, host: str, silence: bool) -> float:
        """How long to wait before judging: a link reported down waits for its switch peers' reports (they
        arrive within milliseconds when the switch fails), a host with no switch peers not at all; silence waits
        ``silence_settle_s``, for a silence that spreads to show itself."""
        if not self.config.enabled:
            return 0.0
        if silence:
            return self.config.silence_settle_s
        h = self.hosts().get(host)
        if h is None or not h.switch:
            return 0.0
        peers = len(self._switch_counts().get(h.switch, ()))
        return self.config.settle_s if peers >= self.config.switch_min_hosts else 0.0

    # -- the fleet now ---------------------------------------------------------------------------

    def causes(self) -> list[Cause]:
        """Every shared cause that holds now: switches first (the most specific), then zones, then the fleet.
        Counted at most every 100 ms (and whenever evidence changes): each count reads every host, and a mass
        event judges thousands of hosts against it."""
        if not self.config.enabled:
            return []
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < 0.1:
            return self._cached[1]
        # every cause needs a quiet host, a lost link or a switch reported down: with none, nothing to count (at
        # 10,000 hosts the count of every host's view, each sweep, took half of the inspector's loop)
        quiet_possible = self._links_lost or self._switches_down or self.may_be_quiet()
        out = self._count() if quiet_possible else []
        self._cached = (now, out)
        return out

    def _count(self) -> list[Cause]:
        inventory = self.hosts()
        views = {h: self.view(h) for h in inventory}
        watched = [h for h, v in views.items() if v.watched]
        quiet = {h for h in watched if views[h].quiet}
        lost = quiet | {h for h in self._links_lost if h in views and views[h].watched}
        out: list[Cause] = []
        switches, zones = self._grouped(inventory)
        for switch, members in sorted(switches.items()):
            gone = sorted(h for h in members if h in lost)
            reported = self._switches_down.get(switch, "")
            if reported or len(gone) >= self.config.switch_min_hosts:
                out.append(Cause(f"switch:{switch}", switch, "switch", tuple(gone),
                                 sum(1 for h in members if views[h].watched), reported))
        for zone, members in sorted(zones.items()):
            zw = [h for h in members if views[h].watched]
            zq = sorted(h for h in zw if h in quiet)
            if len(zw) == len(watched):
                continue  # the zone is the whole fleet: judged as the fleet below
            if len(zw) >= self.config.min_zone_hosts and len(zq) > self.config.max_silent_share * len(zw):
                out.append(Cause(f"zone:{zone}", zone, "zone", tuple(zq), len(zw)))
        # the fleet: by share of every quiet host; by count, of those no switch or zone explains already
        unexplained = quiet.difference(*(c.hosts for c in out))
        if quiet and (len(quiet) > self.config.max_silent_share * len(watched)
                      or len(unexplained) > self.config.max_silent_hosts):
            out.append(Cause("fleet", "inspector", "inspector", tuple(sorted(quiet)), len(watched)))
        return out

    def cause_of(self, host: str, silence: bool, causes: Iterable[Cause] | None = None) -> Cause | None:
        """The shared cause that explains this host's fault, if one holds. Silence is explained by the broadest
        cause covering the host (a whole fleet silent is the inspector's isolation, not many switches failing);
        a link reported down only by its switch."""
        found = list(self.causes() if causes is None else causes)
        for c in reversed(found) if silence else found:
            if host in c.hosts and (silence or c.kind == "switch"):
                return c
        return None

    # -- judging one suspicion ---------------------------------------------------------------

    def judge(self, host: str, *, silence: bool, fence_shared: bool = False, retry: bool = False) -> Judgement:
        """May this suspected host be fenced now? ``silence``: the suspicion is silence, not evidence;
        ``fence_shared``: a policy rule fences a failed switch's hosts (still within the budget; silence held by
        a zone or the fleet is never fenced); ``retry``: an attempt that failed before, already counted."""
        if silence and self.view(host).heard:
            return Judgement(Verdict.WITHDRAW, "the host is heard again")
        if self.config.enabled and self.behind():
            return Judgement(Verdict.WAIT, "the inspector is behind: silence and evidence are judged once it caught up",
                             retry_at=self.clock() + 0.5)
        cause = self.cause_of(host, silence) if self.config.enabled else None
        if cause is not None and not (fence_shared and cause.kind == "switch"):
            self.holds += 1
            return Judgement(Verdict.HOLD, cause.describe(), cause.key)
        if retry:
            return Judgement(Verdict.FENCE)
        if not self.config.enabled:
            return Judgement(Verdict.FENCE)
        c = self.config
        zone = self.hosts().get(host, Host(host)).zone
        zone_wait = self._due(f"zone:{zone}", c.fence_burst, c.fence_rate_per_minute)
        fleet_wait = self._due("fleet", c.fleet_fence_burst, c.fleet_fence_rate_per_minute)
        if zone_wait > 0 or fleet_wait > 0:
            which = (f"zone {zone or '(none)'}: {c.fence_rate_per_minute:g}/min after {c.fence_burst}"
                     if zone_wait >= fleet_wait else
                     f"fleet: {c.fleet_fence_rate_per_minute:g}/min after {c.fleet_fence_burst}")
            return Judgement(Verdict.WAIT, f"fencing budget spent ({which})",
                             retry_at=self.clock() + max(zone_wait, fleet_wait))
        self._buckets[f"zone:{zone}"].tokens -= 1.0
        self._buckets["fleet"].tokens -= 1.0
        self.fences_allowed += 1
        return Judgement(Verdict.FENCE)

    def _due(self, key: str, burst: int, per_minute: float) -> float:
        """Refill the bucket; 0 when it holds a fence, else the seconds until it will."""
        now, rate = self.clock(), per_minute / 60.0
        b = self._buckets.setdefault(key, _Bucket(float(burst), now))
        b.tokens = min(float(burst), b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            return 0.0
        return (1.0 - b.tokens) / rate if rate > 0 else 3600.0


def _group(inventory: dict[str, Host], attr: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, h in inventory.items():
        key = getattr(h, attr, "")
        if key:
            out.setdefault(key, []).append(name)
    return out

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
unreachable) and it is not already fenced or taken out of service; it is
*quiet* when declared unreachable or silent for longer than ``quiet_after_s``
(a healthy agent speaks every heartbeat interval, so hosts silenced together
are all quiet by the time the first crosses the liveness timeout).

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
    fence_rate_per_minute: float = 6.0  # per zone, after the burst (Kubernetes: 0.1 node/s)
    fence_burst: int = 2
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
    """What the guard needs to know of one host's liveness (``southbound.liveness`` provides it)."""

    def __init__(self, watched: bool, quiet: bool) -> None:
        self.watched, self.quiet = watched, quiet


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
    _links_lost: dict[str, float] = field(default_factory=dict)   # host -> when it reported its link down
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _cached: tuple[float, list[Cause]] | None = None  # a mass event judges thousands of hosts against one count
    _groups: tuple[int, dict[str, list[str]], dict[str, list[str]]] | None = None  # (inventory id, switches, zones)
    _switches_down: dict[str, str] = field(default_factory=dict)  # switch -> its monitor's word
    fences_allowed: int = 0
    holds: int = 0

    # -- evidence kept here --------------------------------------------------------------------

    def is_link_fault(self, fault_type: str) -> bool:
        return fault_type in self.config.link_fault_types

    def link_lost(self, host: str) -> None:
        self._links_lost.setdefault(host, self.clock())
        self._cached = None

    def link_back(self, host: str) -> None:
        self._links_lost.pop(host, None)
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
        arrive within milliseconds when the switch fails); silence needs no wait (hosts silenced together are
        all quiet when the first is declared), nor does a host with no switch peers."""
        if not self.config.enabled or silence:
            return 0.0
        h = self.hosts().get(host)
        if h is None or not h.switch:
            return 0.0
        peers = len(self._switch_counts().get(h.switch, ()))
        return self.config.settle_s if peers >= self.config.switch_min_hosts else 0.0

    # -- the fleet now ---------------------------------------------------------------------------

    def causes(self) -> list[Cause]:
        """Every shared cause that holds now: switches first (the most specific), then zones, then the fleet.
        Counted at most every 10 ms (and whenever evidence changes): each count reads every host."""
        if not self.config.enabled:
            return []
        now = self.clock()
        if self._cached is not None and now - self._cached[0] < 0.01:
            return self._cached[1]
        out = self._count()
        self._cached = (now, out)
        return out

    def _count(self) -> list[Cause]:
        inventory = self.hosts()
        views = {h: self.view(h) for h in inventory}
        watched = [h for h, v in views.items() if v.watched]
        quiet = {h for h in watched if views[h].quiet}
        lost = quiet | {h for h in self._links_lost if h in inventory}
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
        if silence and not self.view(host).quiet:
            return Judgement(Verdict.WITHDRAW, "the host is heard again")
        cause = self.cause_of(host, silence) if self.config.enabled else None
        if cause is not None and not (fence_shared and cause.kind == "switch"):
            self.holds += 1
            return Judgement(Verdict.HOLD, cause.describe(), cause.key)
        if retry:
            return Judgement(Verdict.FENCE)
        wait = self._take(self.hosts().get(host, Host(host)).zone)
        if wait > 0:
            return Judgement(Verdict.WAIT, f"zone fencing budget spent ({self.config.fence_rate_per_minute:g}/min "
                                           f"after {self.config.fence_burst})", retry_at=self.clock() + wait)
        self.fences_allowed += 1
        return Judgement(Verdict.FENCE)

    def _take(self, zone: str) -> float:
        """Take one fence from the zone's bucket: 0 when taken, else the seconds until one is due."""
        if not self.config.enabled:
            return 0.0
        now, rate = self.clock(), self.config.fence_rate_per_minute / 60.0
        b = self._buckets.setdefault(zone, _Bucket(float(self.config.fence_burst), now))
        b.tokens = min(float(self.config.fence_burst), b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate if rate > 0 else 3600.0


def _group(inventory: dict[str, Host], attr: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, h in inventory.items():
        key = getattr(h, attr, "")
        if key:
            out.setdefault(key, []).append(name)
    return out

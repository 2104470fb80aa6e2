"""Subscribe and query filters (the seeds' SubscribeFilterClass / FaultQueryFilterClass) and ownership views."""

from __future__ import annotations

from dataclasses import dataclass

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from doctor_common.faults import any_type_matches, check_pattern

RESOURCE_TYPES = ("server", "port")
MAX_FILTER_ITEMS = 1000


class FilterError(ValueError):
    """The filter is malformed; the message says what to fix."""


@dataclass(frozen=True)
class Filter:
    resource_types: tuple[str, ...] = ()
    resource_ids: frozenset[str] = frozenset()
    fault_types: tuple[str, ...] = ()
    min_severity: int = 0
    start_ns: int = 0
    end_ns: int = 0
    fault_id: str = ""

    @classmethod
    def from_proto(cls, f: fault_pb2.SubscribeFilter | fault_pb2.FaultQueryFilter) -> "Filter":
        for name in ("virtual_resource_type", "virtual_resource_id", "fault_type"):
            if len(getattr(f, name)) > MAX_FILTER_ITEMS:
                raise FilterError(f"filter.{name} lists more than {MAX_FILTER_ITEMS} items")
        for t in f.virtual_resource_type:
            if t not in RESOURCE_TYPES:
                raise FilterError(f"filter.virtual_resource_type {t!r} is unknown; use one of {', '.join(RESOURCE_TYPES)}")
        for rid in f.virtual_resource_id:
            if not rid or len(rid) > 255:
                raise FilterError("filter.virtual_resource_id holds an empty or over-long id")
        try:
            patterns = tuple(check_pattern(p) for p in f.fault_type)
        except ValueError as exc:
            raise FilterError(f"filter.fault_type: {exc}") from None
        if f.min_severity not in common_pb2.Severity.values():
            raise FilterError(f"filter.min_severity {f.min_severity} is not a Severity value")
        start = getattr(f, "event_start_unix_nanos", 0)
        end = getattr(f, "event_end_unix_nanos", 0)
        if start and end and end < start:
            raise FilterError("filter.event_end_unix_nanos is before event_start_unix_nanos")
        return cls(tuple(f.virtual_resource_type), frozenset(f.virtual_resource_id), patterns,
                   f.min_severity, start, end, getattr(f, "fault_id", ""))

    def fault_ok(self, fault: common_pb2.Fault) -> bool:
        if fault.severity < self.min_severity and fault.state != common_pb2.ALARM_STATE_CLEARED:
            return False
        if self.fault_id and fault.fault_id != self.fault_id:
            return False
        if self.start_ns and fault.event_time_unix_nanos < self.start_ns:
            return False
        if self.end_ns and fault.event_time_unix_nanos > self.end_ns:
            return False
        return any_type_matches(self.fault_types, fault.fault_type)

    def resource_ok(self, vr: common_pb2.VirtualResourceInfo) -> bool:
        if self.resource_types and vr.virtual_resource_type not in self.resource_types:
            return False
        return not self.resource_ids or vr.virtual_resource_id in self.resource_ids

    def wants_physical(self) -> bool:
        return not self.resource_types and not self.resource_ids


def view_resources(
    principal: Principal,
    flt: Filter,
    virtual: list[common_pb2.VirtualResourceInfo],
    physical: list[common_pb2.PhysicalResourceInfo],
    require_faults: bool = True,
) -> tuple[list[common_pb2.VirtualResourceInfo], list[common_pb2.PhysicalResourceInfo]]:
    """What of these resources the principal may see and asked for; physical ones go to administrators only."""
    out_v = []
    for vr in virtual:
        if not principal.owns(vr.project_id) or not flt.resource_ok(vr):
            continue
        faults = [f for f in vr.faults if flt.fault_ok(f)]
        if require_faults and not faults:
            continue
        if len(faults) != len(vr.faults):
            vr = _with_faults(vr, faults)
        out_v.append(vr)
    out_p = []
    if principal.admin and flt.wants_physical():
        for pr in physical:
            faults = [f for f in pr.faults if flt.fault_ok(f)]
            if require_faults and not faults:
                continue
            if len(faults) != len(pr.faults):
                pr = _with_faults(pr, faults)
            out_p.append(pr)
    return out_v, out_p


def _with_faults(msg, faults):  # type: ignore[no-untyped-def]
    copy = type(msg)()
    copy.CopyFrom(msg)
    del copy.faults[:]
    copy.faults.extend(faults)
    return copy


def view_notification(principal: Principal, flt: Filter, n: fault_pb2.FaultNotification) -> fault_pb2.FaultNotification | None:
    """The principal's share of a notification, or None when nothing in it is theirs."""
    if principal.admin and flt == Filter():
        return n  # the common administrator case: no copy
    maintenance = n.HasField("maintenance")
    if maintenance:
        # a request for consent reaches every owner whose resources it names, whatever fault types or severity
        # the subscription narrowed faults to: only ownership and the resource filters apply
        flt = Filter(resource_types=flt.resource_types, resource_ids=flt.resource_ids)
    virtual, physical = view_resources(principal, flt, list(n.virtual_resource_info), list(n.physical_resource_info),
                                       require_faults=not maintenance)
    if not virtual and not physical:
        return None
    out = fault_pb2.FaultNotification(virtual_resource_info=virtual, physical_resource_info=physical)
    for field in _SHARED_FIELDS:  # everything but the resources, whatever fields the contract grows
        if field.message_type is not None:
            if n.HasField(field.name):  # CopyFrom would mark an absent one present
                getattr(out, field.name).CopyFrom(getattr(n, field.name))
        else:
            setattr(out, field.name, getattr(n, field.name))
    if maintenance and not principal.admin:  # the owner's own servers' outcomes, nobody else's
        mine = [o for o in out.maintenance.servers if principal.owns(o.project_id)]
        del out.maintenance.servers[:]
        out.maintenance.servers.extend(mine)
    return out


_SHARED_FIELDS = [f for f in fault_pb2.FaultNotification.DESCRIPTOR.fields
                  if f.name not in ("virtual_resource_info", "physical_resource_info")]

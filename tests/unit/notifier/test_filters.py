"""Filters validate what consumers send; views show each principal only what is theirs."""

import pytest

from doctor_common.api import common_pb2, fault_pb2
from doctor_common.auth import Principal
from notifier.filters import Filter, FilterError, view_notification

A = Principal("a", project="project-a")
B = Principal("b", project="project-b")
ADMIN = Principal("admin", admin=True)


def _fault(ftype: str = "compute.host.nic.down", sev: int = common_pb2.SEVERITY_CRITICAL) -> common_pb2.Fault:
    return common_pb2.Fault(fault_id="f1", fault_type=ftype, severity=sev, event_time_unix_nanos=100)


def _notification(**kw) -> fault_pb2.FaultNotification:  # type: ignore[no-untyped-def]
    f = _fault(**kw)
    return fault_pb2.FaultNotification(
        notification_id="n1", sequence=7,
        virtual_resource_info=[
            common_pb2.VirtualResourceInfo(virtual_resource_id="vm-a", virtual_resource_type="server",
                                           project_id="project-a", faults=[f]),
            common_pb2.VirtualResourceInfo(virtual_resource_id="port-a", virtual_resource_type="port",
                                           project_id="project-a", faults=[f]),
            common_pb2.VirtualResourceInfo(virtual_resource_id="vm-b", virtual_resource_type="server",
                                           project_id="project-b", faults=[f])],
        physical_resource_info=[common_pb2.PhysicalResourceInfo(physical_resource_id="compute-1", faults=[f])])


def ids(n: fault_pb2.FaultNotification | None) -> set[str]:
    assert n is not None
    return {v.virtual_resource_id for v in n.virtual_resource_info} | {p.physical_resource_id for p in n.physical_resource_info}


def test_consumers_see_only_their_project_and_never_the_host() -> None:
    """Ownership: project-a gets its server and port, project-b its server; neither the physical host."""
    n = _notification()
    assert ids(view_notification(A, Filter(), n)) == {"vm-a", "port-a"}
    assert ids(view_notification(B, Filter(), n)) == {"vm-b"}
    assert view_notification(Principal("c", project="project-c"), Filter(), n) is None


def test_a_consumers_share_keeps_everything_but_others_resources() -> None:
    """The incident's phase, fencing outcome and timeline reach the owner as they reach the administrator."""
    n = _notification()
    n.fenced, n.fencing_error, n.phase = True, "", fault_pb2.INCIDENT_PHASE_FENCED
    n.timeline.stamps.add(stage=common_pb2.STAGE_FENCED, unix_nanos=5)
    mine = view_notification(A, Filter(), n)
    assert mine is not None
    assert (mine.phase, mine.fenced, mine.sequence, mine.notification_id) == (n.phase, True, 7, "n1")
    assert mine.timeline == n.timeline


def test_admin_sees_everything_including_the_physical_fault() -> None:
    """Administrators receive the host fault too."""
    assert ids(view_notification(ADMIN, Filter(), _notification())) == {"vm-a", "port-a", "vm-b", "compute-1"}


@pytest.mark.parametrize("flt, expected", [
    (fault_pb2.SubscribeFilter(fault_type=["compute.host.*"]), {"vm-a", "port-a"}),
    (fault_pb2.SubscribeFilter(fault_type=["compute.hypervisor.*"]), set()),
    (fault_pb2.SubscribeFilter(virtual_resource_type=["port"]), {"port-a"}),
    (fault_pb2.SubscribeFilter(virtual_resource_id=["vm-a"]), {"vm-a"}),
    (fault_pb2.SubscribeFilter(min_severity=common_pb2.SEVERITY_CRITICAL), {"vm-a", "port-a"}),
])
def test_filter_narrows_a_consumers_view(flt: fault_pb2.SubscribeFilter, expected: set[str]) -> None:
    """Type wildcards, resource types and ids, minimum severity narrow what project-a receives."""
    view = view_notification(A, Filter.from_proto(flt), _notification())
    assert (ids(view) if view else set()) == expected


def test_min_severity_drops_warnings_but_not_their_clearing() -> None:
    """A major-only subscriber skips a warning, yet is told when an alarm it saw clears."""
    flt = Filter.from_proto(fault_pb2.SubscribeFilter(min_severity=common_pb2.SEVERITY_MAJOR))
    assert view_notification(A, flt, _notification(sev=common_pb2.SEVERITY_WARNING)) is None
    cleared = _notification(sev=common_pb2.SEVERITY_WARNING)
    for v in cleared.virtual_resource_info:
        v.faults[0].state = common_pb2.ALARM_STATE_CLEARED
    assert ids(view_notification(A, flt, cleared)) == {"vm-a", "port-a"}


def test_admin_filtering_by_resource_drops_the_physical_part() -> None:
    """An administrator asking for one server gets that server, not the host."""
    flt = Filter.from_proto(fault_pb2.SubscribeFilter(virtual_resource_id=["vm-b"]))
    assert ids(view_notification(ADMIN, flt, _notification())) == {"vm-b"}


@pytest.mark.parametrize("flt, words", [
    (fault_pb2.SubscribeFilter(fault_type=["compute.host.[nic]"]), "may hold only"),
    (fault_pb2.SubscribeFilter(fault_type=[""]), "empty"),
    (fault_pb2.SubscribeFilter(virtual_resource_type=["vm"]), "unknown"),
    (fault_pb2.SubscribeFilter(virtual_resource_id=[""]), "empty or over-long"),
    (fault_pb2.SubscribeFilter(min_severity=42), "not a Severity"),
    (fault_pb2.SubscribeFilter(fault_type=["x"] * 1001), "more than 1000"),
])
def test_bad_filters_are_rejected_with_what_to_fix(flt: fault_pb2.SubscribeFilter, words: str) -> None:
    """Malformed filters raise FilterError whose message names the field."""
    with pytest.raises(FilterError, match=words):
        Filter.from_proto(flt)


def test_query_time_range() -> None:
    """FaultQueryFilter's event time range is applied, and an inverted range is rejected."""
    n = _notification()
    inside = Filter.from_proto(fault_pb2.FaultQueryFilter(event_start_unix_nanos=50, event_end_unix_nanos=150))
    after = Filter.from_proto(fault_pb2.FaultQueryFilter(event_start_unix_nanos=101))
    assert ids(view_notification(A, inside, n)) == {"vm-a", "port-a"}
    assert view_notification(A, after, n) is None
    with pytest.raises(FilterError, match="before"):
        Filter.from_proto(fault_pb2.FaultQueryFilter(event_start_unix_nanos=5, event_end_unix_nanos=1))


def test_a_large_snapshot_goes_in_parts_under_the_limit() -> None:
    """Thousands of resources: each part stays under the limit, names the subscription and position, every
    part but the last says more follows, and together they hold every resource once, in order."""
    from notifier.server import snapshot_parts

    virtual = [common_pb2.VirtualResourceInfo(virtual_resource_id=f"vm-{i}", project_id="p", faults=[_fault()])
               for i in range(3000)]
    physical = [common_pb2.PhysicalResourceInfo(physical_resource_id=f"h-{i}", faults=[_fault()] * 3)
                for i in range(3000)]
    parts = snapshot_parts("s1", 42, virtual, physical, limit=64 * 1024)
    assert len(parts) > 5 and all(p.ByteSize() <= 64 * 1024 for p in parts)
    assert [p.more for p in parts] == [True] * (len(parts) - 1) + [False]
    assert {(p.subscription_id, p.last_sequence) for p in parts} == {("s1", 42)}
    assert [v.virtual_resource_id for p in parts for v in p.virtual_resource_info] == [f"vm-{i}" for i in range(3000)]
    assert [h.physical_resource_id for p in parts for h in p.physical_resource_info] == [f"h-{i}" for i in range(3000)]
    assert snapshot_parts("s1", 0, [], []) == [fault_pb2.SubscribeResponse(subscription_id="s1")]


def _maintenance_notice() -> fault_pb2.FaultNotification:
    from doctor_common.api import maintenance_pb2 as mpb
    return fault_pb2.FaultNotification(
        notification_id="maintenance.s1.owners_notified", sequence=9,
        virtual_resource_info=[
            common_pb2.VirtualResourceInfo(virtual_resource_id="vm-a", virtual_resource_type="server",
                                           project_id="project-a", virtual_resource_state="maintenance"),
            common_pb2.VirtualResourceInfo(virtual_resource_id="vm-b", virtual_resource_type="server",
                                           project_id="project-b", virtual_resource_state="maintenance")],
        physical_resource_info=[common_pb2.PhysicalResourceInfo(physical_resource_id="compute-1")],
        maintenance=mpb.MaintenanceNotification(session_id="s1", state=mpb.SESSION_STATE_OWNERS_NOTIFIED, servers=[
            mpb.ServerOutcome(server_id="vm-a", project_id="project-a"),
            mpb.ServerOutcome(server_id="vm-b", project_id="project-b")]))


def test_a_maintenance_notice_reaches_each_owner_with_its_own_servers_only() -> None:
    """No faults are needed for a consent request to pass, and fault filters do not hold it back; each owner
    sees its servers (and their outcomes) only; a resource filter still applies; the administrator sees all."""
    n = _maintenance_notice()
    a = view_notification(A, Filter(), n)
    assert a is not None and [v.virtual_resource_id for v in a.virtual_resource_info] == ["vm-a"]
    assert [o.server_id for o in a.maintenance.servers] == ["vm-a"] and a.maintenance.session_id == "s1"
    assert not a.physical_resource_info
    critical_only = Filter(fault_types=("compute.host.*",), min_severity=common_pb2.SEVERITY_CRITICAL)
    assert view_notification(A, critical_only, n) is not None, "a consent request is not a fault to filter"
    assert view_notification(A, Filter(resource_ids=frozenset({"vm-other"})), n) is None
    assert view_notification(A, Filter(resource_types=("port",)), n) is None
    full = view_notification(ADMIN, Filter(), n)
    assert full is not None and len(full.maintenance.servers) == 2 and full.physical_resource_info


def test_a_fault_view_does_not_grow_an_empty_maintenance_field() -> None:
    """A copied view of a fault notification stays a fault: the stream must not take it for maintenance."""
    v = view_notification(A, Filter(), _notification())
    assert v is not None and not v.HasField("maintenance") and v.notification_id == "n1"

"""The seeds' southbound JSON event format is accepted and checked."""

import pytest

from doctor_common.api import agent_pb2, common_pb2
from inspector.southbound.json_events import parse_json_events
from inspector.southbound.messages import BadMessage

SEED = ('{"event": {"time": "2016-04-12T08:00:00", "type": "compute.host.down", "details": {"hostname": "compute-1",'
        ' "source": "sample_monitor", "cause": "link-down", "severity": "critical", "status": "down",'
        ' "monitor_id": "monitor-1", "monitor_event_id": "123"}}}')


def test_the_seeds_example_event_parses() -> None:
    """The example of the seeds' EventNotification becomes a critical fault of compute-1."""
    [(host, state, observed)] = parse_json_events(SEED)
    assert host == "compute-1" and state.fault_type == "compute.host.down"
    assert state.status == agent_pb2.COMPONENT_STATUS_FAULT and state.severity == common_pb2.SEVERITY_CRITICAL
    assert state.description == "link-down" and observed == 1460448000 * 10**9


def test_bulk_form() -> None:
    """The bulk 'events' wrapper carries several events; status up clears."""
    doc = ('{"events": [{"event": {"time": "2016-04-12T08:00:00Z", "type": "compute.host.nic.error",'
           ' "details": {"hostname": "c1"}}}, {"time": "2016-04-12T08:00:01Z", "type": "x.y",'
           ' "details": {"hostname": "c2", "status": "up"}}]}')
    events = parse_json_events(doc)
    assert [h for h, _, _ in events] == ["c1", "c2"]
    assert events[1][1].status == agent_pb2.COMPONENT_STATUS_OK


def test_a_bare_list_is_the_bulk_form_as_opnfv_doctors_sample_monitor_sends_it() -> None:
    """Doctor's sample monitor PUTs a list of events (with an 'id' and 'monitor' of its own): each is taken."""
    doc = ('[{"id": "monitor_sample_id1", "time": "2026-12-03T09:00:00.123456", "type": "compute.host.down",'
           ' "details": {"hostname": "compute-1", "status": "down", "monitor": "monitor_sample",'
           ' "monitor_event_id": "monitor_sample_event1"}}]')
    [(host, state, observed)] = parse_json_events(doc)
    assert host == "compute-1" and state.fault_type == "compute.host.down"
    assert state.status == agent_pb2.COMPONENT_STATUS_FAULT and state.severity == common_pb2.SEVERITY_CRITICAL
    assert state.details["monitor_event_id"] == "monitor_sample_event1" and observed % 10**9 == 123456000


@pytest.mark.parametrize("doc, words", [
    ('"compute.host.down"', "expected an object"),
    ("[1]", r"events\[0\] needs string 'time' and 'type'"),
    ('{"event": {"time": ', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"event": {"time": "9999-01-01T00:00:00", "type": "x", "details": {"hostname": "h"}}}', "outside 1970-2262"),
    ('{"events": [{"time": "2016-04-12T08:00:00", "type": "x", "details": {"hostname": "h"}}, {"type": "x"}]}',
     r"events\[1\] needs"),
    ('{"event": {"type": "x"}}', "needs string 'time' and 'type'"),
    ('{"event": {"time": "yesterday", "type": "x", "details": {"hostname": "h"}}}', "ISO 8601"),
    ('{"event": {"time": "2016-04-12T08:00:00", "type": "x"}}', "hostname is required"),
    ('{"event": {"time": "2016-04-12T08:00:00", "type": "x", "details": {"hostname": "h", "severity": "doom"}}}',
     "severity"),
])
def test_malformed_json_events_say_what_is_wrong(doc: str, words: str) -> None:
    """Each malformed event is rejected with a message naming the field."""
    with pytest.raises(BadMessage, match=words):
        parse_json_events(doc)

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


@pytest.mark.parametrize("doc, words", [
    ("[1]", "expected an object"),
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

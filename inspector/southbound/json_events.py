"""The seeds' JSON southbound event (``{'event': {...}}`` and the bulk ``{'events': [...]}``), as agent states.

Existing monitors report through ``AgentGateway.ReportJson`` or over HTTP
(``PUT``/``POST /events``, ``http_events``); each event becomes the component
state a monitor would have sent, checked like an agent's. Besides the seeds'
two forms, a bare list of events is the bulk form too: OPNFV Doctor's sample
monitor sends that.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from doctor_common.agent_limits import MAX_BATCH, MAX_DETAILS, MAX_ID, MAX_TEXT
from doctor_common.api import agent_pb2, common_pb2
from doctor_common.faults import severity_from_name
from inspector.southbound.messages import BadMessage, check_state


def parse_json_events(text: str) -> list[tuple[str, agent_pb2.ComponentState, int]]:
    """Every event of the report, checked, as (host, component state, observed ns); the first bad one raises
    ``BadMessage`` naming it (``events[i]...``) and nothing of the report counts."""
    try:
        doc = json.loads(text)
    except RecursionError:  # nesting deeper than the parser's stack: not an event report either way
        raise BadMessage("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadMessage(f"not valid JSON: {exc}") from None
    if isinstance(doc, list):  # OPNFV Doctor's sample monitor sends the bulk form as a bare list of events
        doc = {"events": doc}
    if not isinstance(doc, dict):
        raise BadMessage("expected an object with 'event' or 'events', or a list of events")
    if "event" in doc:
        raw = [doc["event"]]
    elif isinstance(doc.get("events"), list):
        raw = [e.get("event", e) if isinstance(e, dict) else e for e in doc["events"]]
    else:
        raise BadMessage("expected an object with 'event' or 'events', or a list of events")
    if len(raw) > MAX_BATCH:
        raise BadMessage(f"at most {MAX_BATCH} events")
    out = []
    for i, ev in enumerate(raw):
        if not isinstance(ev, dict) or not isinstance(ev.get("type"), str) or not isinstance(ev.get("time"), str):
            raise BadMessage(f"events[{i}] needs string 'time' and 'type'")
        details = ev.get("details") or {}
        if not isinstance(details, dict):
            raise BadMessage(f"events[{i}].details must be an object")
        host = details.get("hostname")
        if not isinstance(host, str) or not host:
            raise BadMessage(f"events[{i}].details.hostname is required")
        try:
            t = datetime.fromisoformat(ev["time"])
        except ValueError:
            raise BadMessage(f"events[{i}].time {ev['time']!r} is not an ISO 8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        observed = int(t.timestamp() * 1e9)
        if not 0 <= observed < 2**63:  # the timeline's nanoseconds are an int64 since 1970
            raise BadMessage(f"events[{i}].time {ev['time']!r} is outside 1970-2262")
        try:
            severity = severity_from_name(str(details.get("severity", "critical")))
        except ValueError as exc:
            raise BadMessage(f"events[{i}].details.severity: {exc}") from None
        status = str(details.get("status", "down")).lower()
        ok = status in ("up", "ok", "normal", "active")
        state = agent_pb2.ComponentState(
            component=f"monitor:{details.get('monitor_id', 'json')}:{ev['type']}"[:MAX_ID],
            checker=str(details.get("source", "json"))[:MAX_ID],
            status=agent_pb2.COMPONENT_STATUS_OK if ok else agent_pb2.COMPONENT_STATUS_FAULT,
            fault_type="" if ok else ev["type"], severity=common_pb2.SEVERITY_CLEARED if ok else severity,
            description=str(details.get("cause", ""))[:MAX_TEXT],
            details={str(k)[:MAX_ID]: str(v)[:MAX_TEXT] for k, v in list(details.items())[:MAX_DETAILS]})
        check_state(state, f"events[{i}]")
        out.append((host, state, observed))
    return out

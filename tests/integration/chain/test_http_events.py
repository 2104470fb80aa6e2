"""A monitor's JSON event over HTTP (PUT/POST /events) through the real inspector: fenced, marked down, notified.

The inspector runs with its virtual BMCs and embedded controller and ``[http_events] listen = "127.0.0.1:0"``;
no agents (a monitor is the only reporter). Requests are real HTTP from aiohttp's client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from controller_adapter.base import HostStatus, ServerState
from doctor_common.api import fault_pb2
from doctor_common.lab.cloud import Lab, wait_for
from doctor_common.timeline import Stage, as_dict
from tests.integration.chain.conftest import Consumer

P = fault_pb2.IncidentPhase
SUSPECTED, FENCED, MARKED_DOWN = P.INCIDENT_PHASE_SUSPECTED, P.INCIDENT_PHASE_FENCED, P.INCIDENT_PHASE_MARKED_DOWN


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(hosts=3, servers_per_host=1, netns=False, projects=("project-a", "project-b", "project-c"),
              extra_config='[http_events]\nlisten = "127.0.0.1:0"\nmax_body_bytes = 65536\n')
    consumers: list[Consumer] = []
    lab.consumers = consumers  # type: ignore[attr-defined]
    try:
        await lab.start(agents=False)
        yield lab
    finally:
        for c in consumers:
            await c.close()
        await lab.close()


async def subscribe(lab: Lab, principal: str) -> Consumer:
    c = await Consumer(lab, principal).start()
    lab.consumers.append(c)  # type: ignore[attr-defined]
    return c


async def send(lab: Lab, body: Any, token: str | None, method: str = "PUT") -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{lab.inspector.http_events.port}/events"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.request(method, url, data=data, headers=headers) as r:
        return r.status, await r.json()


def powers(lab: Lab) -> dict[str, tuple[str, int]]:
    return {h: lab.power(h) for h in lab.hosts}


async def test_a_monitors_put_fences_the_host_and_notifies_its_owner(lab: Lab) -> None:
    """OPNFV Doctor's sample monitor's request as it sends it (PUT /events, a list holding one compute.host.down)
    with compute-1's agent token: 200, one accepted; compute-1 is powered off once and marked down, its server
    set to error, and the server's owner is told suspected, fenced, marked down — the chain a gRPC report
    takes, with the monitor's details and the received stamp. Owners of other hosts' servers hear nothing."""
    owner, other = await subscribe(lab, "project-a"), await subscribe(lab, "project-b")
    assert lab.server_owner["vm-1-1"] == "project-a" and lab.server_owner["vm-2-1"] == "project-b"
    sample = [{"id": "monitor_sample_id1", "time": "2026-12-03T09:00:00.000001", "type": "compute.host.down",
               "details": {"hostname": "compute-1", "status": "down", "monitor": "monitor_sample",
                           "monitor_event_id": "monitor_sample_event1"}}]
    assert await send(lab, sample, lab.hosts["compute-1"].agent_token) == (200, {"accepted": 1})

    await wait_for(lambda: owner.of_phase(MARKED_DOWN), 10, what="the owner's marked-down notice")
    assert owner.phases() == [SUSPECTED, FENCED, MARKED_DOWN]
    vm = next(v for v in owner.faults[-1].virtual_resource_info if v.virtual_resource_id == "vm-1-1")
    assert vm.virtual_resource_state == "error" and owner.faults[-1].fenced
    fault = vm.faults[0]
    assert fault.fault_type == "compute.host.down" and fault.root_cause_resource_id == "compute-1"
    assert fault.fault_details["monitor_event_id"] == "monitor_sample_event1"
    stamps = as_dict(owner.faults[-1].timeline)
    assert stamps[Stage.STAGE_OBSERVED] < stamps[Stage.STAGE_RECEIVED] <= stamps[Stage.STAGE_FENCED]
    assert powers(lab) == {"compute-1": ("off", 1), "compute-2": ("on", 0), "compute-3": ("on", 0)}
    ctl = lab.inspector.controller
    assert (await ctl.get_host("compute-1")).status == HostStatus.DOWN
    assert {s.state for s in await ctl.servers_on_host("compute-1")} == {ServerState.ERROR}
    assert other.faults == [] and "vm-2-1" not in owner.resource_ids()


async def test_a_bulk_post_is_taken_whole_and_a_bad_entry_refuses_it_whole(lab: Lab) -> None:
    """POST of the seeds' bulk form with two of compute-1's faults: 200, two accepted, the owner notified of
    both. A bulk whose second entry is bad: 400 naming events[1], and neither entry is notified (the next good
    report's notice is the owner's next one)."""
    owner = await subscribe(lab, "project-a")
    token = lab.hosts["compute-1"].agent_token

    def fault(kind: str, monitor: str, **extra: str) -> dict[str, Any]:
        return {"event": {"time": "2026-12-03T09:00:00Z", "type": kind, "details": {
            "hostname": "compute-1", "severity": "warning", "monitor_id": monitor, **extra}}}

    def types() -> set[str]:  # every fault the owner was told of (a notice lists the server's active faults)
        return {f.fault_type for n in owner.faults for v in n.virtual_resource_info for f in v.faults}

    bulk = {"events": [fault("compute.host.sensor.warning", "m1"), fault("compute.host.cpu.error", "m2")]}
    assert await send(lab, bulk, token, "POST") == (200, {"accepted": 2})
    await wait_for(lambda: len(types()) >= 2, 10, what="both notices")
    assert types() == {"compute.host.cpu.error", "compute.host.sensor.warning"}

    bad = {"events": [fault("compute.host.memory.error", "m3"), fault("compute.host.disk.error", "m4",
                                                                       severity="doom")]}
    status, answer = await send(lab, bad, token, "POST")
    assert status == 400 and "events[1].details.severity" in answer["error"]
    assert await send(lab, {"events": [fault("compute.host.fan.warning", "m5")]}, token) == (200, {"accepted": 1})
    await wait_for(lambda: "compute.host.fan.warning" in types(), 10, what="the next good report's notice")
    assert types() == {"compute.host.cpu.error", "compute.host.sensor.warning", "compute.host.fan.warning"}, \
        "nothing of the refused bulk was notified"
    assert powers(lab) == {h: ("on", 0) for h in lab.hosts}


async def test_a_token_that_may_not_speak_for_the_host_powers_nothing_off(lab: Lab) -> None:
    """compute.host.down about compute-1 sent with compute-2's agent token: 403 naming both hosts; with the
    administrator's (a consumer's) token: 403; with no token: 401; a body too large: 413. Nothing is fenced or
    published for them: after a good report from compute-2 about itself has been notified, the administrator
    has heard only that one, and every BMC is on, never powered off."""
    admin = await subscribe(lab, "admin")
    down = {"event": {"time": "2026-12-03T09:00:00Z", "type": "compute.host.down",
                      "details": {"hostname": "compute-1", "status": "down"}}}
    status, answer = await send(lab, down, lab.hosts["compute-2"].agent_token)
    assert status == 403 and "belongs to host 'compute-2', not 'compute-1'" in answer["error"]
    status, answer = await send(lab, down, lab.tokens["admin"])
    assert status == 403 and "consumer's token" in answer["error"]
    status, answer = await send(lab, down, None)
    assert status == 401 and "missing credentials" in answer["error"]
    status, answer = await send(lab, b" " * 70_000, lab.hosts["compute-1"].agent_token)
    assert status == 413 and "over 65536 bytes" in answer["error"]

    ok = {"event": {"time": "2026-12-03T09:00:01Z", "type": "compute.host.sensor.warning",
                    "details": {"hostname": "compute-2", "severity": "warning"}}}
    assert await send(lab, ok, lab.hosts["compute-2"].agent_token) == (200, {"accepted": 1})
    await wait_for(lambda: admin.faults, 10, what="the good report's notice")
    assert [p.physical_resource_id for n in admin.faults for p in n.physical_resource_info] == ["compute-2"]
    assert lab.inspector.alarms.incident("compute-1") is None
    assert powers(lab) == {h: ("on", 0) for h in lab.hosts}
    gate = lab.inspector.http_events.server
    await wait_for(lambda: not gate.active and not gate.queue, 5, what="every connection's place given back")

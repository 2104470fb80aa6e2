"""examples/vnfm.py, the ACT-STBY VNFM of docs/consumer.md, as a real process against the real fault chain.

Lab placement (servers round robin over the projects): with four hosts of one
server each and projects a, b, project-a owns vm-1-1 (compute-1) and vm-3-1
(compute-3), project-b vm-2-1 (compute-2) and vm-4-1 (compute-4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from doctor_common.api import fault_pb2
from doctor_common.api import maintenance_pb2 as mpb
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import wait_for
from tests.integration.vnfm_example import Vnfm, run_once, sequences, server_filter

P = fault_pb2.IncidentPhase


async def test_the_vnfm_switches_over_for_its_active_server_only(make_lab: Any, tmp_path: Path) -> None:
    """Two VNFMs of two projects. compute-2 (project-b's active server) loses its link: project-b's VNFM makes
    its standby active once (not again on the fenced and marked-down notices) and reports the switchover time
    from the fault's detection and from receipt; project-a's VNFM does nothing. compute-3 (project-a's standby)
    then loses its link: project-a's VNFM reports lost redundancy and keeps its active server; project-b's hears
    nothing. Each printed exactly the notices an always-connected consumer with its filter received."""
    lab = await make_lab(hosts=4, servers_per_host=1, projects=("project-a", "project-b"))
    assert (lab.server_owner["vm-1-1"], lab.server_owner["vm-3-1"]) == ("project-a", "project-a")
    assert (lab.server_owner["vm-2-1"], lab.server_owner["vm-4-1"]) == ("project-b", "project-b")
    ref_a = await make_lab.consumer(lab, "project-a", server_filter("vm-1-1", "vm-3-1"))
    ref_b = await make_lab.consumer(lab, "project-b", server_filter("vm-2-1", "vm-4-1"))
    a = Vnfm(lab, "project-a", "vm-1-1", "vm-3-1", tmp_path)
    b = Vnfm(lab, "project-b", "vm-2-1", "vm-4-1", tmp_path)
    try:
        await a.start()
        await b.start()
        lab.cut_link("compute-2")
        await wait_for(lambda: ref_b.of_phase(P.INCIDENT_PHASE_MARKED_DOWN), 15, what="compute-2 marked down")
        await wait_for(lambda: b.state().get("cursor") == sequences(ref_b)[-1], 10, 0.01,
                       "project-b's VNFM to handle every notice")
        lab.cut_link("compute-3")
        await wait_for(lambda: ref_a.of_phase(P.INCIDENT_PHASE_MARKED_DOWN), 15, what="compute-3 marked down")
        await wait_for(lambda: a.state().get("cursor") == sequences(ref_a)[-1], 10, 0.01,
                       "project-a's VNFM to handle every notice")
    finally:
        await a.stop()
        await b.stop()

    sb = b.state()
    assert (sb["active"], sb["standby"]) == ("vm-4-1", "vm-2-1"), b.text()
    assert "SWITCHOVER: standby vm-4-1 is now active" in b.text()
    [switch] = sb["switchovers"]
    suspected = ref_b.of_phase(P.INCIDENT_PHASE_SUSPECTED)[0]
    assert (switch["from"], switch["to"], switch["sequence"]) == ("vm-2-1", "vm-4-1", suspected.sequence), \
        "it switched on the first (suspected) notice"
    assert "compute-2 UNKNOWN" in switch["why"] and "compute.host.nic.down" in switch["why"]
    assert 0 <= switch["ms_since_receipt"] <= switch["ms_since_detection"], switch
    detected = suspected.virtual_resource_info[0].faults[0].event_time_unix_nanos
    assert abs(switch["at_unix_nanos"] - detected - switch["ms_since_detection"] * 1e6) < 1e3, \
        "measured from the fault's own detection time"
    assert re.search(r"ms after detection, [\d.]+ ms after receipt", b.text())
    assert b.notices() == [(s, False) for s in sequences(ref_b)] and len(sequences(ref_b)) == 3
    assert "vm-1-1" not in b.text() and "vm-3-1" not in b.text()

    sa = a.state()
    assert (sa["active"], sa["standby"], sa["switchovers"]) == ("vm-1-1", "vm-3-1", []), a.text()
    assert set(sa["lost"]) == {"vm-3-1"}
    assert "REDUNDANCY LOST: standby vm-3-1" in a.text() and "SWITCHOVER" not in a.text()
    assert a.notices() == [(s, False) for s in sequences(ref_a)] and len(sequences(ref_a)) == 3
    assert min(sequences(ref_a)) > max(sequences(ref_b)), "compute-2's notices came first and were not a's"
    assert "vm-2-1" not in a.text() and "compute-2" not in a.text()


async def test_with_switch_on_fenced_the_vnfm_waits_for_the_confirmed_power_off(make_lab: Any,
                                                                                tmp_path: Path) -> None:
    """--switch-on fenced: the suspected notice (host UNKNOWN) is noted and waited on; the switchover comes with
    the fenced notice (host DOWN), once."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    ref = await make_lab.consumer(lab, "project-a", server_filter("vm-1-1", "vm-2-1"))
    v = Vnfm(lab, "project-a", "vm-1-1", "vm-2-1", tmp_path, "--switch-on", "fenced")
    try:
        await v.start()
        lab.cut_link("compute-1")
        await wait_for(lambda: ref.of_phase(P.INCIDENT_PHASE_MARKED_DOWN), 15, what="compute-1 marked down")
        await wait_for(lambda: v.state().get("cursor") == sequences(ref)[-1], 10, 0.01, "the VNFM to handle it all")
    finally:
        await v.stop()
    [switch] = v.state()["switchovers"]
    assert switch["sequence"] == ref.of_phase(P.INCIDENT_PHASE_FENCED)[0].sequence, v.text()
    assert "compute-1 DOWN" in switch["why"]
    assert "vm-1-1: its host is suspected; waiting for the fence" in v.text()


async def test_the_vnfm_resumes_after_being_away_and_never_handles_a_notice_twice(make_lab: Any,
                                                                                  tmp_path: Path) -> None:
    """The VNFM is SIGKILLed; its active server's host loses its link meanwhile. Restarted, it resumes from the
    cursor in its state file: the snapshot shows the host DOWN and it switches over, and it is replayed exactly
    the notices it missed (marked as replayed, not acted on again). Killed and restarted once more, it replays
    nothing and switches nothing; the next live notice (the host enabled again) is its only one."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",))
    ref = await make_lab.consumer(lab, "project-a", server_filter("vm-1-1", "vm-2-1"))
    v = Vnfm(lab, "project-a", "vm-1-1", "vm-2-1", tmp_path)
    try:
        await v.start()
        cursor = v.state()["cursor"]
        await v.kill()
        lab.cut_link("compute-1")
        await wait_for(lambda: ref.of_phase(P.INCIDENT_PHASE_MARKED_DOWN), 15, what="compute-1 marked down")
        missed = sequences(ref)
        assert len(missed) == 3 and missed[0] > cursor

        await v.start()
        await wait_for(lambda: v.state().get("cursor") == missed[-1], 10, 0.01, "the replay")
        s = v.state()
        assert (s["active"], s["standby"]) == ("vm-2-1", "vm-1-1"), v.text()
        [switch] = s["switchovers"]
        assert switch["source"] == "the snapshot" and "compute-1 DOWN" in switch["why"]
        assert switch["ms_since_detection"] > switch["ms_since_receipt"]
        assert v.notices(run=2) == [(seq, True) for seq in missed], v.run_text(2)

        await v.kill()
        await v.start()
        assert f"resumed after #{cursor}: replaying #{cursor + 1}-#{missed[-1]}" in v.run_text(2)
        assert f"resumed after #{missed[-1]}: nothing missed" in v.run_text(3)
        # the repair: link back, powered on, enabled: a live notice (CLOSED) after the third run subscribed
        lab.restore_link("compute-1")
        await lab.inspector.fencer.power_on(lab.inspector.responder.bmc_for("compute-1"))
        nic = lab.inspector.liveness.hosts["compute-1"].components
        await wait_for(lambda: nic["nic:eth0"].status == 1, 10, what="the NIC up again")
        async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as adm:
            await adm.enable_host("compute-1")
        await wait_for(lambda: ref.of_phase(P.INCIDENT_PHASE_CLOSED), 10, what="the closed notice")
        closed = ref.of_phase(P.INCIDENT_PHASE_CLOSED)[0].sequence
        await wait_for(lambda: v.state().get("cursor") == closed, 10, 0.01, "the VNFM to handle it")
    finally:
        await v.stop()
    assert v.notices(run=3) == [(closed, False)], v.run_text(3)
    assert len(v.state()["switchovers"]) == 1
    every = [seq for seq, _ in v.notices()]
    assert every == sequences(ref) and len(set(every)) == len(every), "none missed, none twice"
    assert v.state()["lost"].keys() == {"vm-1-1"}, "its server stays in error until the owner rebuilds it"


async def test_a_vnfm_whose_cursor_fell_out_of_retention_resynchronises_from_a_snapshot(make_lab: Any,
                                                                                         tmp_path: Path) -> None:
    """The log keeps one notice ([notifier] retention = 1). The VNFM is away while its active server's host is
    fenced (three notices): restarted, its cursor is older than what the log keeps, so it is told OUT_OF_RANGE,
    says so, subscribes afresh and takes the new snapshot as the truth: it switches over once, from the snapshot,
    and continues from the snapshot's position, with no notice handled from before it."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",),
                         extra_config="[notifier]\nretention = 1\n")
    ref = await make_lab.consumer(lab, "project-a", server_filter("vm-1-1", "vm-2-1"))
    v = Vnfm(lab, "project-a", "vm-1-1", "vm-2-1", tmp_path)
    try:
        await v.start()
        first_id = v.state()["subscription_id"]
        await v.kill()
        lab.cut_link("compute-1")
        await wait_for(lambda: ref.of_phase(P.INCIDENT_PHASE_MARKED_DOWN), 15, what="compute-1 marked down")
        last = sequences(ref)[-1]
        await v.start()
        await wait_for(lambda: "starting there" in v.run_text(2), 15, 0.01, "the resynchronisation")
    finally:
        await v.stop()
    text = v.run_text(2)
    assert "cannot resume after #0: resume_after=0 is older than the log's retention" in text, text
    s = v.state()
    assert (s["active"], s["standby"]) == ("vm-2-1", "vm-1-1"), text
    assert len(s["switchovers"]) == 1 and s["switchovers"][0]["source"] == "the snapshot"
    assert s["cursor"] == last and s["subscription_id"] != first_id, "a new subscription, from its snapshot on"
    assert v.notices() == [], "nothing from before the snapshot is handled"


async def test_the_vnfm_answers_maintenance_after_switching_to_its_standby(make_lab: Any, tmp_path: Path) -> None:
    """compute-1, host of the VNFM's active server, goes into maintenance: the VNFM makes its standby active, then
    answers LIVE_MIGRATE for vm-1-1 through Maintenance.Reply; the session empties the host. Bad input to the
    example ends in one line naming the problem."""
    lab = await make_lab(hosts=3, servers_per_host=1, projects=("project-a", "project-b"))
    assert (lab.server_owner["vm-1-1"], lab.server_owner["vm-3-1"]) == ("project-a", "project-a")
    v = Vnfm(lab, "project-a", "vm-1-1", "vm-3-1", tmp_path)
    try:
        await v.start()
        async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as adm:
            progress = [m async for m in adm.maintenance_start(["compute-1"], reason="BIOS 2.1", reply_timeout_s=30)]
            assert progress[-1].session.state == mpb.SESSION_STATE_IN_MAINTENANCE, progress[-1]
            sid = progress[-1].session.session_id
            moved = {o.server_id: o.host for o in progress[-1].session.servers}
            assert set(moved) == {"vm-1-1"} and moved["vm-1-1"] != "compute-1"
        await wait_for(lambda: "in_maintenance" in v.text(), 10, 0.01, "the VNFM told the host is in maintenance")
    finally:
        await v.stop()
    s = v.state()
    assert (s["active"], s["standby"]) == ("vm-3-1", "vm-1-1"), v.text()
    assert s["switchovers"][0]["why"] == f"maintenance {sid}"
    assert s["replies"] == [{"session": sid, "servers": ["vm-1-1"], "answer": "live_migrate",
                             "sequence": s["replies"][0]["sequence"]}]
    assert f"REPLIED to session {sid}: live_migrate for vm-1-1" in v.text()
    assert f"vm-1-1 on {moved['vm-1-1']}" in v.text(), "it is told where its server went"

    code, _, err = await run_once("--endpoint", lab.endpoint, "--token-file", str(v.token), "--active", "vm-1-1",
                                  "--standby", "vm-2-1", "--state-file", str(tmp_path / "other.json"))
    assert code == 1 and err.strip().splitlines() == [
        "vnfm: PERMISSION_DENIED: virtual resource 'vm-2-1' belongs to another project"], err
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-token")
    code, _, err = await run_once("--endpoint", lab.endpoint, "--token-file", str(bad), "--active", "vm-1-1",
                                  "--standby", "vm-3-1", "--state-file", str(tmp_path / "bad.json"))
    assert code == 1 and err.strip().splitlines() == [
        "vnfm: UNAUTHENTICATED: unknown token: ask the operator for a consumer token"], err
    code, _, err = await run_once("--endpoint", lab.endpoint, "--token-file", str(v.token), "--active", "vm-9-9",
                                  "--standby", "vm-3-1", "--state-file", str(v.state_file))
    assert code == 2 and "manages vm-3-1 and vm-1-1, not vm-9-9 and vm-3-1" in err, err

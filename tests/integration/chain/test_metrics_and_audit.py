"""Metrics and the audit trail of a real inspector: a real fault (a netns link cut) fenced through a virtual BMC,
scraped over HTTP from the metrics listener and read from the ``doctor.audit`` logger (also as JSON lines)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from doctor_common.api import fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, wait_for
from doctor_common.logs import JsonFormatter

ROOT = Path(__file__).resolve().parents[3]
MARKED_DOWN = fault_pb2.IncidentPhase.INCIDENT_PHASE_MARKED_DOWN
METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'


class Trail(logging.Handler):
    """The audit records, and each formatted as the JSON log format writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.json.format(record))

    def events(self, event: str) -> list[dict[str, object]]:
        return [r.fields for r in self.records if r.fields.get("event") == event]  # type: ignore[attr-defined]


@pytest.fixture
def trail() -> Iterator[Trail]:
    logger = logging.getLogger("doctor.audit")
    handler, level = Trail(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the inspector's /metrics, by (name, sorted labels)."""
    port = lab.inspector.metrics.port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_fenced_fault_moves_the_counters_and_is_audited(make_lab, trail: Trail) -> None:  # type: ignore[no-untyped-def]
    """Cutting compute-1's link: the scrape counts the fault with its outcome, one fence attempt and its ok
    result (the BMC really powered off once), the stages of the chain, the subscribers as subscribed and the
    replica as leader; the audit trail says the fault, the verdict, the fence and each notification with its
    recipients, and never a token or the BMC password. Then an administrator enables the host: refused while
    broken, done once repaired, each with the caller's name."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), extra_config=METRICS)
    assert lab.inspector.metrics.port > 0
    before = await scrape(lab)
    assert value(before, "doctor_inspector_leader") == 1
    assert value(before, "doctor_hosts", liveness="up") == 2
    assert value(before, "doctor_fence_attempts_total") == 0
    assert value(before, "doctor_handshakes_in_progress", stream="agent") == 0  # both agents set up
    assert lab.inspector.subscription_admission.enter()  # a subscription being set up
    assert value(await scrape(lab), "doctor_handshakes_in_progress", stream="subscription") == 1
    lab.inspector.subscription_admission.leave()
    lab.inspector.agent_admission.refused += 2  # as if a storm had been turned away twice (what is under test: the scrape)
    assert value(await scrape(lab), "doctor_handshakes_refused_total", stream="agent") == 2
    assert value(before, "doctor_handshakes_refused_total", stream="subscription") == 0
    owner = await make_lab.consumer(lab, "project-a")
    admin = await make_lab.consumer(lab, "admin")

    lab.cut_link("compute-1")
    await wait_for(lambda: owner.of_phase(MARKED_DOWN) and admin.of_phase(MARKED_DOWN), 10, what="notifications")
    assert lab.power("compute-1") == ("off", 1)

    after = await scrape(lab)
    assert value(after, "doctor_subscribers", kind="project") == 1
    assert value(after, "doctor_subscribers", kind="admin") == 1
    assert value(after, "doctor_faults_total", fault_type="compute.host.nic.down", outcome="suspected") == 1
    assert value(after, "doctor_guard_verdicts_total", verdict="fence") == 1
    assert value(after, "doctor_fence_attempts_total") == 1
    assert value(after, "doctor_fence_results_total", result="ok") == 1
    assert value(after, "doctor_fence_results_total", result="failed") == 0
    assert value(after, "doctor_notifications_published_total") >= 3  # suspected, fenced, marked down
    assert value(after, "doctor_notification_log_sequence") == lab.inspector.log.last_sequence >= 3
    assert value(after, "doctor_fault_stage_seconds_count", stage="fenced") == 1
    assert value(after, "doctor_fault_chain_seconds_count") == 1
    assert value(after, "doctor_incidents", phase="marked_down") == 1
    assert value(after, "doctor_controller_call_seconds_count", call="force_down") >= 1
    assert value(after, "doctor_inspector_leader") == 1

    faults = [f for f in trail.events("fault") if f["host"] == "compute-1"]
    assert [(f["component"], f["fault_type"], f["verdict"]) for f in faults] == [
        ("nic:eth0", "compute.host.nic.down", "suspected")]
    assert [(j["host"], j["verdict"]) for j in trail.events("judged")] == [("compute-1", "fence")]
    assert [f["host"] for f in trail.events("fence_attempt")] == ["compute-1"]
    assert [(f["host"], f["result"]) for f in trail.events("fence_result")] == [("compute-1", "ok")]
    published = trail.events("published")
    assert [p["phase"] for p in published] == ["suspected", "fenced", "marked_down"]
    assert all(p["recipients"] == 2 for p in published), published  # the owner and the administrator

    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as adm:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await adm.enable_host("compute-1")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        lab.restore_link("compute-1")
        await lab.inspector.fencer.power_on(lab.inspector.responder.bmc_for("compute-1"))
        nic = lab.inspector.liveness.hosts["compute-1"].components
        await wait_for(lambda: nic["nic:eth0"].status == 1, 10, what="the NIC up again")
        await adm.enable_host("compute-1")
    acts = [(a["action"], a["principal"], a["target"], a["outcome"]) for a in trail.events("operator")]
    assert acts == [("enable_host", "admin", "compute-1", "refused"), ("enable_host", "admin", "compute-1", "done")]
    final = await scrape(lab)
    assert value(final, "doctor_operator_actions_total", action="enable_host", outcome="done") == 1

    secrets = [lab.bmc_password, *lab.tokens.values(), *(h.agent_token for h in lab.hosts.values())]
    for line in trail.lines:
        entry = json.loads(line)  # one JSON object per line, with the structured fields as keys
        assert {"time", "level", "logger", "message", "event"} <= entry.keys(), entry
        assert entry["logger"] == "doctor.audit" and entry["message"].startswith("AUDIT ")
        assert not any(s in line for s in secrets), line


async def test_a_rejected_token_is_audited_without_the_token(make_lab, trail: Trail) -> None:  # type: ignore[no-untyped-def]
    """A consumer with an unknown token is turned away UNAUTHENTICATED; the audit trail says so and why, and
    the scrape counts it by kind; the token itself is nowhere in the trail. A project token asking for an
    administrator's call is refused, naming the caller."""
    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",), extra_config=METRICS, netns=False)
    bad = "not-a-token-" + lab.tokens["admin"][::-1]
    async with DoctorClient(lab.endpoint, bad) as stranger:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stranger.query_faults()
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as tenant:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await tenant.enable_host("compute-1")
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    rejected = trail.events("rejected")
    assert [r["kind"] for r in rejected] == ["unknown_token", "not_admin"], rejected
    assert "project-a" in str(rejected[1]["reason"])
    assert all(str(r["peer"]).startswith("ipv4:127.0.0.1:") for r in rejected)
    assert not any(bad in line or lab.tokens["project-a"] in line for line in trail.lines)
    samples = await scrape(lab)
    assert value(samples, "doctor_rejected_clients_total", kind="unknown_token") == 1
    assert value(samples, "doctor_rejected_clients_total", kind="not_admin") == 1


async def test_every_metric_is_documented_and_every_alert_names_a_real_one(make_lab) -> None:  # type: ignore[no-untyped-def]
    """docs/metrics.md names every family a replica exposes, and the example alert rules use only those."""
    lab = await make_lab(hosts=1, servers_per_host=1, projects=("project-a",), extra_config=METRICS, netns=False)
    port = lab.inspector.metrics.port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    # the parser names counters without _total; the docs name what Prometheus stores (with it)
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(text)
               if f.name.startswith("doctor_") and not f.name.endswith("_created")}  # prometheus_client's own
    assert len(exposed) > 30
    documented = set(re.findall(r"`(doctor_[a-z_]+)`", (ROOT / "docs/metrics.md").read_text()))
    assert exposed - documented == set(), "undocumented metrics"
    assert documented - exposed == set(), "documented metrics this replica does not expose"
    alerts = (ROOT / "deploy/prometheus/doctor-alerts.yml").read_text()
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\b(doctor_[a-z_]+)\b", alerts)}
    assert used and used - exposed == set(), "alert rules naming metrics that do not exist"


async def test_a_failed_fence_is_counted_and_audited_without_the_password(make_lab, trail: Trail) -> None:  # type: ignore[no-untyped-def]
    """compute-2's BMC refuses the credentials: the attempt and its failure are counted and audited with the
    error, and neither the password tried nor the real one is in the trail; the host stays on."""
    lab = await make_lab(hosts=2, servers_per_host=1, projects=("project-a",), unfenceable=("compute-2",),
                         extra_config=METRICS)
    c = await make_lab.consumer(lab, "project-a")
    lab.cut_link("compute-2")
    await wait_for(lambda: c.of_phase(fault_pb2.IncidentPhase.INCIDENT_PHASE_UNFENCED), 10, what="notification")
    await wait_for(lambda: trail.events("fence_result"), 10, what="the fence's outcome on the trail")
    results = trail.events("fence_result")
    assert results[0]["host"] == "compute-2" and results[0]["result"] == "failed" and results[0]["error"]
    samples = await scrape(lab)
    assert value(samples, "doctor_fence_results_total", result="failed") >= 1
    assert value(samples, "doctor_fence_results_total", result="ok") == 0
    assert value(samples, "doctor_fence_attempts_total") >= value(samples, "doctor_fence_results_total",
                                                                   result="failed")
    assert value(samples, "doctor_incidents", phase="unfenced") == 1
    assert lab.power("compute-2") == ("on", 0)
    assert not any(secret in line for line in trail.lines for secret in ("not-the-password", lab.bmc_password))

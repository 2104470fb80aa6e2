"""Diagnostics, health and reflection: what an SRE with grpcurl meets."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2  # v1's messages are v1alpha's, field for field
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from agent.state import AgentState
from agent.transport import AgentLink
from doctor_common.api import agent_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab
from doctor_common.timeline import now_ns


async def test_status_needs_an_admin_token(lab: Lab) -> None:
    """GetStatus answers administrators (role, controller, hosts) and refuses a project token."""
    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as c:
        s = await c.status()
        assert s.role == "standalone" and s.controller == "embedded" and s.protobuf_implementation
        assert [h.host_id for h in (await c.hosts()).hosts] == ["compute-1", "compute-2"]
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.status()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_health_serving(lab: Lab) -> None:
    """grpc.health.v1 reports the server and each service SERVING."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "doctor.v1.FaultManagement", "doctor.v1.AgentGateway"):
            r = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_describes_every_service(lab: Lab) -> None:
    """Server reflection (v1alpha) lists the doctor services and resolves their methods, as grpcurl needs."""
    # the reflection client is blocking: run it off the loop that serves the inspector
    await asyncio.to_thread(_describe, lab.endpoint)


async def test_reflection_v1_is_served_too(lab: Lab) -> None:
    """Clients that speak only grpc.reflection.v1 (newer grpcurl, grpcui, Postman) list the services and get the
    file describing one, over the v1 method itself."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = {s.name for s in (await call.read()).list_services_response.service}
        assert {"doctor.v1.Maintenance", "doctor.v1.FaultManagement", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= listed
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="doctor.v1.Maintenance"))
        files = (await call.read()).file_descriptor_response.file_descriptor_proto
        names = {descriptor_pb2.FileDescriptorProto.FromString(f).name for f in files}
        assert "doctor/v1/maintenance.proto" in names
        await call.done_writing()


def _describe(endpoint: str) -> None:
    with grpc.insecure_channel(endpoint) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"doctor.v1.AgentGateway", "doctor.v1.FaultManagement", "doctor.v1.Diagnostics",
                "doctor.v1.Hosts", "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool
        pool = DescriptorPool(db)
        method = pool.FindServiceByName("doctor.v1.FaultManagement").FindMethodByName("Subscribe")
        assert method.output_type.full_name == "doctor.v1.SubscribeStreamMessage"


async def test_doctorctl_against_a_live_inspector(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """doctorctl status/hosts work with a token file; a wrong token exits 1 with the gRPC status."""
    tok = tmp_path / "admin.token"
    tok.write_text(lab.tokens["admin"])
    def run(*a: str) -> "asyncio.Future[subprocess.CompletedProcess[str]]":
        return asyncio.to_thread(subprocess.run, [sys.executable, "-m", "doctor_common.ctl", "--endpoint",
                                                  lab.endpoint, *a], capture_output=True, text=True, timeout=30)
    out = await run("--token-file", str(tok), "hosts")
    assert out.returncode == 0 and "compute-1" in out.stdout and "UP" in out.stdout
    bad = tmp_path / "bad.token"
    bad.write_text("nope")
    out = await run("--token-file", str(bad), "status")
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr


async def test_an_agents_own_health_reaches_diagnostics(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real agent stream (AgentLink) reports its checkers' runs: GetStatus carries the latest report and
    `doctorctl status --checks` prints it per check."""
    runs = agent_pb2.CheckRuns(check="raid", runs=3, failures=1, mean_duration_ms=12.5, recent=[
        agent_pb2.CheckRun(started_unix_nanos=now_ns(), duration_ms=10000.0, outcome="timeout",
                           detail="timed out after 10s")])
    reports = 0

    def health() -> agent_pb2.AgentHealth:
        nonlocal reports
        reports += 1
        return agent_pb2.AgentHealth(collected_unix_nanos=now_ns(), checkers=[
            agent_pb2.CheckerHealth(checker="exec", restarts=reports, last_crash="RuntimeError: boom", checks=[runs]),
            agent_pb2.CheckerHealth(checker="nic")])

    link = AgentLink(AgentState("compute-1", "test"), (f"unix:{lab.socket}",), lab.hosts["compute-1"].agent_token,
                     health=health, health_interval_s=0.05)
    task = asyncio.create_task(link.run())
    try:
        async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as c:
            async with asyncio.timeout(10):
                while True:  # the report after Hello, then one in place of a heartbeat: the latest one is kept
                    agent = next((a for a in (await c.status()).agents if a.host_id == "compute-1"), None)
                    if agent is not None and agent.health.checkers and agent.health.checkers[0].restarts >= 2:
                        break
                    await asyncio.sleep(0.05)
        exec_health = agent.health.checkers[0]
        assert (exec_health.checker, exec_health.checks[0]) == ("exec", runs)
        tok = tmp_path / "admin.token"
        tok.write_text(lab.tokens["admin"])
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "doctor_common.ctl", "--endpoint",
                                      lab.endpoint, "--token-file", str(tok), "status", "--checks"],
                                      capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        line = next(x for x in out.stdout.splitlines() if "exec/raid" in x)
        assert "runs 3" in line and "failures 1" in line and "last timeout" in line and "timed out after 10s" in line
        assert "event-driven" in next(x for x in out.stdout.splitlines() if x.strip().startswith("nic"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

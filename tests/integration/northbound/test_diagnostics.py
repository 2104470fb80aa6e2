"""Diagnostics, health and reflection: what an SRE with grpcurl meets."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from doctor_common.client import DoctorClient
from doctor_common.lab import Lab


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

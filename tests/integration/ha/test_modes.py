"""Leader and follower replicas as clients meet them; standalone mode; the [etcd] table at start-up."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.client import DoctorClient, leader_hint
from doctor_common.config import ConfigError
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for
from inspector.config import load_inspector_config
from tests.etcd_cluster import EtcdCluster

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def health(endpoint: str, service: str) -> int:
    async with grpc.aio.insecure_channel(endpoint) as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(r.status)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


async def test_a_follower_serves_diagnostics_and_sends_everyone_else_to_the_leader(
        ha: Any, shared_etcd: EtcdCluster) -> None:
    """A follower reports its role and the leader; its health says NOT_SERVING for the leader's services and
    SERVING for the consumers' (it follows the log); ListHosts and EnableHost answer UNAVAILABLE with the
    leader's address in the ``doctor-leader`` trailer while Subscribe and QueryFaults are served; an agent gets
    a Redirect to the leader's agent socket. On SIGTERM the leader hands over at once (it revokes its lease),
    not after a lease TTL."""
    lab = await ha(shared_etcd, replicas=2, hosts=1, netns=False, agents=False)
    leader, follower = lab.replicas[0], lab.replicas[1]
    lead, follow = await lab.status(0), await lab.status(1)
    assert lead is not None and follow is not None
    assert (lead.role, follow.role) == ("leader", "follower")
    assert follow.leader_endpoint == lead.leader_endpoint == leader.endpoint
    assert follow.leader_token == lead.leader_token > 0 and not follow.agents and not follow.subscriptions
    async def follower_serves_consumers() -> bool:
        return await health(follower.endpoint, "doctor.v1.FaultManagement") == SERVING
    await wait_for(follower_serves_consumers, 5, 0.02, "the follower to follow the log")
    for service, want in (("", SERVING), ("doctor.v1.Diagnostics", SERVING), ("doctor.v1.FaultManagement", SERVING),
                          ("doctor.v1.AgentGateway", NOT_SERVING), ("doctor.v1.Hosts", NOT_SERVING)):
        assert await health(follower.endpoint, service) == want, service
        assert await health(leader.endpoint, service) == SERVING, service

    async with DoctorClient(follower.endpoint, lab.tokens["admin"], follow_leader=False) as c:  # what it answers
        assert await c.query_faults() is not None
        async for msg in c.subscribe_once():
            assert msg.WhichOneof("kind") == "subscribed"
            assert [p.physical_resource_id for p in msg.subscribed.physical_resource_info] == ["compute-1"]
            break
        for call in (c.hosts(), c.enable_host("compute-1")):
            err = await refused(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and leader_hint(err) == leader.endpoint

    async with grpc.aio.insecure_channel(follower.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id="compute-1", boot_id="b")))
        msg = await call.read()
        assert msg.redirect.leader_endpoint == f"unix:{leader.socket}"

    assert leader.proc is not None
    t = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    assert await lab.wait_leader(exclude=(0,), timeout=5) == 1
    took = time.monotonic() - t
    assert await leader.proc.wait() == 0
    assert took < 0.9, f"handover took {took:.2f}s: the lease was not revoked"  # a TTL (1 s) + 0.5 s otherwise
    async with DoctorClient(follower.endpoint, lab.tokens["admin"]) as c:
        assert [h.host_id for h in (await c.hosts()).hosts] == ["compute-1"]


async def test_standalone_says_it_is_not_highly_available(caplog: pytest.LogCaptureFixture) -> None:
    """Without [etcd] the inspector runs alone, as leader of itself ("standalone"), and warns at start that it
    is not highly available."""
    caplog.set_level(logging.WARNING, logger="doctor.inspector")
    lab = Lab(hosts=1, netns=False)
    try:
        await lab.start(agents=False)
        assert lab.inspector.role == "standalone" and lab.inspector.acting
        assert any("NOT highly available" in r.getMessage() for r in caplog.records)
    finally:
        await lab.close()


def write(tmp_path: Path, inspector: str, etcd: str) -> Path:
    (tmp_path / "inventory.toml").write_text('[[hosts]]\nname = "h1"\n')
    cfg = tmp_path / "inspector.toml"
    cfg.write_text(f'[inspector]\n{inspector}\n[controller]\nbackend = "embedded"\n'
                   f'[controller.embedded]\ninventory = "inventory.toml"\n\n{etcd}')
    return cfg


@pytest.mark.parametrize("inspector, etcd, key", [
    ('listen = ["0.0.0.0:50051"]', "[etcd]\n", "inspector.advertise"),
    ('listen = ["unix:/run/doctor.sock"]', "[etcd]\n", "inspector.advertise"),
    ('listen = ["127.0.0.1:50051"]', '[etcd]\nendpoints = ["10.0.0.1"]\n', "etcd.endpoints[0]"),
    ('listen = ["127.0.0.1:50051"]', '[etcd]\nlease_ttl_s = 2\nstep_down_margin_s = 1.5\n', "etcd.step_down_margin_s"),
    ('listen = ["127.0.0.1:50051"]', '[etcd]\nprefix = "nfv"\n', "etcd.prefix"),
    ('listen = ["127.0.0.1:50051"]', '[etcd]\nttl = 2\n', "etcd.ttl"),
    ('listen = ["127.0.0.1:50051"]', '[etcd]\nca_file = "missing.pem"\n', "etcd.ca_file"),
    ('listen = ["127.0.0.1:50051"]\nadvertise_agents = "unix-abstract:doctor"', "[etcd]\n", "inspector.advertise_agents"),
    ('listen = ["127.0.0.1:50051"]\nadvertise = "inspector-1"', "[etcd]\n", "inspector.advertise"),
])
def test_bad_etcd_configuration_names_file_and_key(tmp_path: Path, inspector: str, etcd: str, key: str) -> None:
    """A replicated inspector's configuration is checked at start-up; each error names the file and the key."""
    cfg = write(tmp_path, inspector, etcd)
    with pytest.raises(ConfigError) as err:
        load_inspector_config(cfg)
    assert err.value.key == key and err.value.path == str(cfg), str(err.value)


async def test_check_config_tells_the_mode(tmp_path: Path) -> None:
    """``doctor-inspector --check-config`` says whether the file makes a replica (etcd, prefix, advertised
    address) or a standalone inspector, and exits 2 naming the key of a bad [etcd] table."""
    def run(cfg: Path) -> "asyncio.Future[subprocess.CompletedProcess[str]]":
        return asyncio.to_thread(subprocess.run, [sys.executable, "-m", "inspector.main", "--config", str(cfg),
                                                  "--check-config"], capture_output=True, text=True, timeout=30)
    ha = write(tmp_path, 'listen = ["0.0.0.0:50051"]\nadvertise = "10.0.0.7:50051"',
               '[etcd]\nendpoints = ["10.0.0.1:2379", "10.0.0.2:2379"]\nprefix = "/nfv-doctor/site-a"\n'
               '[tls]\nplaintext = true\n')  # beyond loopback without certificates: on purpose (docs/tls.md)
    out = await run(ha)
    assert out.returncode == 0, out.stderr
    assert "replicated: etcd 10.0.0.1:2379,10.0.0.2:2379 under /nfv-doctor/site-a, advertising 10.0.0.7:50051" \
        in out.stdout
    alone = write(tmp_path, 'listen = ["127.0.0.1:50051"]', "")
    out = await run(alone)
    assert out.returncode == 0 and "standalone, NOT highly available" in out.stdout
    bad = write(tmp_path, 'listen = ["127.0.0.1:50051"]', '[etcd]\nendpoints = []\n')
    out = await run(bad)
    assert out.returncode == 2 and "etcd.endpoints" in out.stderr and str(bad) in out.stderr

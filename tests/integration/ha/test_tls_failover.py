"""Replicas serving TLS: agents with their hosts' certificates follow a failover to the new leader, and the
replicas' own gRPC (the follower's leader probe, Diagnostics) runs over TLS with demanded client certificates."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from doctor_common.api import diagnostics_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.replicated import HaLab
from doctor_common.tls import ClientTls
from tests.etcd_cluster import EtcdCluster
from tests.tls_certs import Pki

SERVER_NAME = "inspector.test"


class TlsHaLab(HaLab):
    """HaLab whose replicas serve TLS (client certificates demanded everywhere) and whose agents present their
    host's certificate over the replicas' unix sockets."""

    def __init__(self, pki: Pki, etcd_endpoints: list[str], **kw: object) -> None:
        self.pki = pki
        server = pki.issue("inspector", (SERVER_NAME,), ("127.0.0.1",))
        self.admin_cert = pki.issue("noc", ("noc.test",))
        super().__init__(etcd_endpoints, extra_config=(
            f'[tls]\ncert_file = "{server.cert}"\nkey_file = "{server.key}"\nclient_ca_file = "{pki.ca_file}"\n'
            'require_client_cert_for = "all"\n'), **kw)  # type: ignore[arg-type]
        self.client_tls = ClientTls(pki.ca_file, self.admin_cert.cert, self.admin_cert.key)

    def write_files(self) -> Path:
        path = super().write_files()
        for name in self.hosts:
            c, conf = self.pki.issue(name, (name,)), self.dir / f"{name}.agent.toml"
            conf.write_text(conf.read_text().replace("[agent]\n", (
                f'[agent]\nca_file = "{self.pki.ca_file}"\ncert_file = "{c.cert}"\nkey_file = "{c.key}"\n'
                f'tls_server_name = "{SERVER_NAME}"\n'), 1))
        return path

    async def status(self, i: int, timeout: float = 1.0) -> diagnostics_pb2.StatusReport | None:
        if not self.replicas[i].running:
            return None
        async with DoctorClient(self.replicas[i].endpoint, self.tokens["admin"], tls=self.client_tls) as c:
            try:
                return await c.status(timeout=timeout)
            except grpc.aio.AioRpcError:
                return None


async def test_tls_agents_follow_a_failover(needs_root: None, shared_etcd: EtcdCluster, tmp_path: Path) -> None:
    """Two TLS replicas; the leader is killed; every agent, identified by its certificate, is taken by the new
    leader, and no host is fenced for the failover."""
    lab = TlsHaLab(Pki(tmp_path / "pki"), shared_etcd.endpoints, replicas=2, hosts=2, servers_per_host=1)
    try:
        await lab.start()
        first = await lab.wait_leader()
        follower = 1 - first
        report = await lab.status(follower)
        assert report is not None and report.role == "follower"
        await lab.kill_replica(first)
        assert await lab.wait_leader(exclude=(first,)) == follower
        await lab.wait_agents(on=follower)
        assert all(lab.power(h)[1] == 0 for h in lab.hosts), "a failover fences nobody"
        async with DoctorClient(lab.replicas[follower].endpoint, lab.tokens["admin"]) as bare:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bare.status(timeout=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "a plaintext client is not served"
    finally:
        await lab.close()

"""TLS on the inspector's listeners, for real: namespaced hosts whose agents speak mutual TLS over the inspector's
socket, virtual BMCs, consumers over TLS; certificates made at test time (tests/tls_certs.py)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from agent.state import AgentState
from agent.transport import CONNECT, open_channel
from controller_adapter.base import HostStatus
from doctor_common.api import agent_pb2, common_pb2, fault_pb2
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, free_port, wait_for
from doctor_common.tls import ClientTls
from tests.tls_certs import Issued, Pki, serial_of

MARKED_DOWN = fault_pb2.INCIDENT_PHASE_MARKED_DOWN
SERVER_NAME = "inspector.test"


class TlsLab:
    """A Lab whose inspector serves TLS (``[tls]`` as given) and whose agents present their host's certificate."""

    def __init__(self, tmp: Path, mode: str = "all", client_cert_listen: str = "") -> None:
        self.pki = Pki(tmp / "pki")
        self.server = self.pki.issue("inspector", (SERVER_NAME, "localhost"), ("127.0.0.1",))
        self.certs = {f"compute-{i}": self.pki.issue(f"compute-{i}", (f"compute-{i}",)) for i in (1, 2, 3)}
        self.consumer_cert = self.pki.issue("vnfm", ("vnfm.test",))
        extra = f'client_cert_listen = ["{client_cert_listen}"]\n' if client_cert_listen else ""
        self.lab = Lab(hosts=3, servers_per_host=1, extra_config=(
            f'[tls]\ncert_file = "{self.server.cert}"\nkey_file = "{self.server.key}"\n'
            f'client_ca_file = "{self.pki.ca_file}"\nrequire_client_cert_for = "{mode}"\n{extra}'))

    def tls(self, cert: Issued | None = None) -> ClientTls:
        return ClientTls(self.pki.ca_file, cert.cert if cert else None, cert.key if cert else None, SERVER_NAME)

    async def start(self, agents: bool = True) -> None:
        await self.lab.start(agents=False)
        for h in self.lab.hosts.values():  # each agent: its own certificate, over the inspector's unix socket
            c, path = self.certs[h.name], self.lab.dir / f"{h.name}.agent.toml"
            path.write_text(path.read_text().replace("[agent]\n", (
                f'[agent]\nca_file = "{self.pki.ca_file}"\ncert_file = "{c.cert}"\nkey_file = "{c.key}"\n'
                f'tls_server_name = "{SERVER_NAME}"\n'), 1))
        if agents:
            await asyncio.gather(*(self.lab.start_agent(h) for h in self.lab.hosts.values()))
            await self.lab.wait_agents()

    def consumer(self, principal: str, cert: Issued | None = None) -> DoctorClient:
        return DoctorClient(self.lab.endpoint, self.lab.tokens[principal], tls=self.tls(cert))


@pytest.fixture
async def tls_lab(needs_root: None, tmp_path: Path) -> AsyncIterator[TlsLab]:
    t = TlsLab(tmp_path)
    try:
        await t.start()
        yield t
    finally:
        await t.lab.close()


def _fault_hello(host: str) -> agent_pb2.AgentMessage:
    """What an agent says when its host's link is down: enough for the inspector to fence the host."""
    state = AgentState(host, "test")
    msg = state.hello()
    msg.hello.components.append(agent_pb2.ComponentState(
        component="nic:eth0", checker="nic", status=agent_pb2.COMPONENT_STATUS_FAULT,
        fault_type="compute.host.nic.down", severity=common_pb2.SEVERITY_CRITICAL, description="eth0 is down"))
    return msg


async def _say_hello(target: str, tls: ClientTls | None, msg: agent_pb2.AgentMessage,
                     token: str | None = None) -> agent_pb2.GatewayMessage | None:
    """One agent stream: Hello, then the inspector's first answer (GRPCError when it refuses)."""
    channel = open_channel(target, 1000, tls)
    try:
        stream = channel.request(CONNECT, Cardinality.STREAM_STREAM, agent_pb2.AgentMessage, agent_pb2.GatewayMessage,
                                 metadata=(("authorization", f"Bearer {token}"),) if token else None)
        async with asyncio.timeout(10):
            async with stream:
                await stream.send_request()
                await stream.send_message(msg)
                first = await stream.recv_message()
                await stream.cancel()
                return first
    finally:
        channel.close()


def _served_serial(port: int, tls: ClientTls) -> int:
    """The serial number of the certificate the inspector shows a new TLS connection."""
    ctx = tls.ssl_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            return serial_of(der)


async def test_tls_agents_fault_fences_and_reaches_a_tls_consumer(tls_lab: TlsLab) -> None:
    """Agents connected over mutual TLS (their certificate names their host, their token agrees); cutting
    compute-1's link fences it, marks it down, and its owner, subscribed over TLS with a client certificate,
    is told."""
    lab = tls_lab.lab
    owner = lab.server_owner["vm-1-1"]
    client = tls_lab.consumer(owner, tls_lab.consumer_cert)
    got: list[fault_pb2.FaultNotification] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async for msg in client.subscribe_once():
            if msg.WhichOneof("kind") == "subscribed":
                subscribed.set()
            elif msg.WhichOneof("kind") == "fault":
                got.append(msg.fault)
    task = asyncio.create_task(listen())
    try:
        async with asyncio.timeout(10):
            await subscribed.wait()
        assert all(r.connected for r in lab.inspector.liveness.hosts.values())
        lab.cut_link("compute-1")
        await wait_for(lambda: any(n.phase == MARKED_DOWN for n in got), 10, what="the owner's marked-down notice")
        assert lab.power("compute-1") == ("off", 1)
        assert lab.power("compute-2") == ("on", 0)
        assert {v.virtual_resource_id for n in got for v in n.virtual_resource_info} >= {"vm-1-1"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_certificate_speaks_only_for_its_own_host(tls_lab: TlsLab) -> None:
    """An agent whose certificate names compute-2 says Hello for compute-1, with compute-1 faulty: refused with
    PERMISSION_DENIED naming both, and nothing happens to compute-1 (not powered off, not down, no incident).
    The same Hello with compute-1's own certificate is taken (it is then fenced: the refusal was what stopped it)."""
    lab = tls_lab.lab
    socket_target = f"unix:{lab.socket}"
    with pytest.raises(GRPCError) as err:
        await _say_hello(socket_target, tls_lab.tls(tls_lab.certs["compute-2"]), _fault_hello("compute-1"))
    assert err.value.status == Status.PERMISSION_DENIED
    assert "compute-2" in (err.value.message or "") and "'compute-1'" in (err.value.message or "")
    # and with compute-2's certificate plus compute-1's token: the two must agree
    with pytest.raises(GRPCError) as err:
        await _say_hello(socket_target, tls_lab.tls(tls_lab.certs["compute-2"]), _fault_hello("compute-1"),
                         token=lab.hosts["compute-1"].agent_token)
    assert err.value.status == Status.PERMISSION_DENIED and "must name the same host" in (err.value.message or "")
    assert lab.power("compute-1") == ("on", 0)
    assert (await lab.inspector.controller.get_host("compute-1")).status != HostStatus.DOWN
    assert lab.inspector.alarms.incident("compute-1") is None
    assert lab.inspector.liveness.hosts["compute-1"].connected, "the real agent's stream was not taken over"

    first = await _say_hello(socket_target, tls_lab.tls(tls_lab.certs["compute-1"]), _fault_hello("compute-1"))
    assert first is not None and first.WhichOneof("kind") == "config"
    await wait_for(lambda: lab.power("compute-1") == ("off", 1), 10, what="compute-1 fenced on its own word")
    assert lab.power("compute-2") == ("on", 0)


async def test_plaintext_and_certificateless_clients_are_refused(tls_lab: TlsLab) -> None:
    """Every listener serves TLS only: a plaintext gRPC client and a plaintext agent fail; with
    require_client_cert_for = "all" a TLS client without a certificate fails too; with one it is served."""
    lab = tls_lab.lab
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises((ProtocolError, StreamTerminatedError, OSError)):
        await _say_hello(f"unix:{lab.socket}", None, _fault_hello("compute-3"), token=lab.hosts["compute-3"].agent_token)
    async with tls_lab.consumer("admin") as bare:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await bare.status(timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    async with tls_lab.consumer("admin", tls_lab.consumer_cert) as c:
        assert (await c.status()).role
    assert lab.power("compute-3") == ("on", 0)


async def test_rotated_server_certificate_is_served_without_a_restart(tls_lab: TlsLab) -> None:
    """Replacing the certificate and key files is picked up by the next connection (its serial is the new one);
    a broken pair written later is refused and the working one kept (also by SIGHUP's reload, which names it)."""
    lab, port = tls_lab.lab, tls_lab.lab.port
    tls = tls_lab.tls(tls_lab.consumer_cert)
    before = await asyncio.to_thread(_served_serial, port, tls)
    assert before == tls_lab.server.serial
    new = tls_lab.pki.issue("inspector", (SERVER_NAME, "localhost"), ("127.0.0.1",), file="inspector-next")
    new.key.replace(tls_lab.server.key)  # renames: a reader sees the old file or the new one, never half of one
    new.cert.replace(tls_lab.server.cert)
    assert await asyncio.to_thread(_served_serial, port, tls) == new.serial
    async with tls_lab.consumer("admin", tls_lab.consumer_cert) as c:
        assert (await c.status()).role, "a gRPC client is served with the new certificate"
    assert all(r.connected for r in lab.inspector.liveness.hosts.values()), "connected agents were not dropped"

    stray = tls_lab.pki.issue("inspector", (SERVER_NAME,), file="stray")
    stray.cert.replace(tls_lab.server.cert)  # a certificate whose key never came: kept out
    assert await asyncio.to_thread(_served_serial, port, tls) == new.serial
    assert await lab.inspector.reload() is False  # SIGHUP with a broken pair: refused, nothing changes
    assert await asyncio.to_thread(_served_serial, port, tls) == new.serial
    stray.key.replace(tls_lab.server.key)  # and now the pair is whole
    assert await asyncio.to_thread(_served_serial, port, tls) == stray.serial
    holder = lab.inspector.certificates[0]  # the listener on lab.port (listen's first address)
    loads = holder.loads
    assert await asyncio.to_thread(_served_serial, port, tls) == stray.serial and holder.loads == loads
    assert await lab.inspector.reload() is True  # SIGHUP: the next handshake reads the files again
    assert await asyncio.to_thread(_served_serial, port, tls) == stray.serial and holder.loads == loads + 1


async def test_agents_mode_demands_certificates_of_agents_only(needs_root: None, tmp_path: Path) -> None:
    """require_client_cert_for = "agents": the client_cert_listen address demands a certificate (an agent with one
    is taken there); on the listen address a consumer is served with its token alone, and an agent that comes
    there without a certificate is refused UNAUTHENTICATED, saying what to configure."""
    mtls_port = free_port()
    t = TlsLab(tmp_path, mode="agents", client_cert_listen=f"127.0.0.1:{mtls_port}")
    try:
        await t.start(agents=False)
        lab = t.lab
        first = await _say_hello(f"127.0.0.1:{mtls_port}", t.tls(t.certs["compute-2"]), AgentState("compute-2", "t").hello())
        assert first is not None and first.WhichOneof("kind") == "config"
        with pytest.raises(GRPCError) as err:
            await _say_hello(lab.endpoint, t.tls(), AgentState("compute-3", "t").hello(),
                             token=lab.hosts["compute-3"].agent_token)
        assert err.value.status == Status.UNAUTHENTICATED and "client_cert_listen" in (err.value.message or "")
        with pytest.raises((ProtocolError, StreamTerminatedError, OSError)):
            await _say_hello(f"127.0.0.1:{mtls_port}", t.tls(), AgentState("compute-3", "t").hello(),
                             token=lab.hosts["compute-3"].agent_token)
        async with t.consumer("project-a") as c:
            assert (await c.query_faults()) is not None
        assert "compute-3" not in lab.inspector.liveness.hosts or not lab.inspector.liveness.hosts["compute-3"].connected
    finally:
        await t.lab.close()


async def test_a_replica_probes_a_tls_leader_with_its_own_certificate(tls_lab: TlsLab) -> None:
    """The follower's leader probe (inspector/ha/redirects.py) dials the leader over TLS with the replica's own
    certificate ([tls] cert_file as the client's, ca_file or client_ca_file to verify): the leader answers; a
    plaintext probe of the same leader does not."""
    from inspector.ha.redirects import LeaderProbe

    peer = tls_lab.lab.inspector.cfg.tls.peer_tls()
    assert peer is not None and peer.cert_file == tls_lab.server.cert
    secured = LeaderProbe(lambda: tls_lab.lab.endpoint, timeout_s=3.0, tls=peer)
    plain = LeaderProbe(lambda: tls_lab.lab.endpoint, timeout_s=3.0)
    try:
        assert await secured.alive() is True
        assert await plain.alive() is False
    finally:
        await secured.close()
        await plain.close()


def _doc_commands() -> str:
    text = (Path(__file__).resolve().parents[3] / "docs" / "tls.md").read_text()
    block = text.split("<!-- tls-make: begin -->", 1)[1].split("<!-- tls-make: end -->", 1)[0]
    return block.split("```sh\n", 1)[1].rsplit("```", 1)[0]


async def test_the_documented_openssl_commands_make_working_certificates(tmp_path: Path) -> None:
    """docs/tls.md's openssl commands, run as written, give an inspector certificate it serves with and agent
    certificates it identifies hosts by (compute-1's is taken for compute-1, compute-2's is not)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path / "made"
    d.mkdir()
    done = await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c", _doc_commands()], cwd=d,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lab = Lab(hosts=2, servers_per_host=1, netns=False, extra_config=(
        f'[tls]\ncert_file = "{d / "controller-1.pem"}"\nkey_file = "{d / "controller-1.key"}"\n'
        f'client_ca_file = "{d / "ca.pem"}"\nrequire_client_cert_for = "all"\n'))
    try:
        await lab.start(agents=False)
        own = ClientTls(d / "ca.pem", d / "compute-1.pem", d / "compute-1.key")
        first = await _say_hello(lab.endpoint, own, AgentState("compute-1", "t").hello())
        assert first is not None and first.WhichOneof("kind") == "config"
        other = ClientTls(d / "ca.pem", d / "compute-2.pem", d / "compute-2.key")
        with pytest.raises(GRPCError) as err:
            await _say_hello(lab.endpoint, other, AgentState("compute-1", "t").hello())
        assert err.value.status == Status.PERMISSION_DENIED
    finally:
        await lab.close()

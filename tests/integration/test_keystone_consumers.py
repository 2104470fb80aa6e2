"""Consumers with Keystone tokens, end to end: an inspector with ``[auth.keystone]`` (the OpenStack controller's
cloud) validates the tokens gRPC clients present against the test cloud's Keystone over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from doctor_common.api import diagnostics_pb2, diagnostics_pb2_grpc, fault_pb2, fault_pb2_grpc
from doctor_common.client import DoctorClient
from doctor_common.lab.cloud import Lab, wait_for
from tests.integration.chain.conftest import Consumer
from tests.integration.test_fault_chain_openstack import OpenStackLab
from notifier.registry import REVOKED
from tests.openstack_cloud import FakeCloud

MARKED_DOWN = fault_pb2.INCIDENT_PHASE_MARKED_DOWN


class KeystoneLab(OpenStackLab):
    """The OpenStack lab whose inspector also accepts the cloud's Keystone tokens (static tokens still work)."""

    def __init__(self, cloud: FakeCloud, keystone: str, **kw: Any) -> None:
        super().__init__(cloud, **kw)
        self.keystone = keystone

    def write_files(self) -> Path:
        cfg = super().write_files()
        cfg.write_text(cfg.read_text() + f"\n[auth.keystone]\n{self.keystone}")
        return cfg


@pytest.fixture
async def keystone_lab(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """``await make(keystone="cache_s = 1\\n", netns=False, agents=False, **lab options)`` -> (lab, cloud)."""
    clouds: list[FakeCloud] = []
    labs: list[Lab] = []

    async def make(keystone: str = "", netns: bool = False, agents: bool = False, **kw: Any) -> tuple[Lab, FakeCloud]:
        if netns:
            request.getfixturevalue("needs_root")
        cloud = FakeCloud().start()
        clouds.append(cloud)
        lab = KeystoneLab(cloud, keystone, netns=netns, **kw)
        labs.append(lab)
        try:
            await lab.start(agents=agents)
        except BaseException:
            await lab.close()
            raise
        return lab, cloud

    try:
        yield make
    finally:
        for lab in labs:
            await lab.close()
        for cloud in clouds:
            cloud.stop()


async def query(lab: Lab, metadata: tuple[tuple[str, str], ...]) -> fault_pb2.FaultQueryResponse:
    async with grpc.aio.insecure_channel(lab.endpoint) as channel:
        return await fault_pb2_grpc.FaultManagementStub(channel).QueryFaults(
            fault_pb2.FaultQueryRequest(), metadata=metadata, timeout=10)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_a_project_members_token_sees_only_its_project(keystone_lab: Any) -> None:
    """Keystone tokens of project-a's and project-b's members subscribe; when compute-1 fails each is told of
    its own project's servers and ports only (as the static admin sees all of them)."""
    lab, cloud = await keystone_lab(netns=True, agents=True, hosts=2, servers_per_host=2)
    cloud.add_user("alice", "alice-pw", {"project-a": ("member",)})
    alice = await asyncio.to_thread(login, cloud, "alice", "alice-pw", "project-a")
    lab.tokens["alice"] = alice
    lab.tokens["bob"] = cloud.issue_token("bob", "project-b", ("member", "reader"))
    consumers = {p: await Consumer(lab, p).start() for p in ("alice", "bob", "admin")}
    try:
        mine = {s for s in lab.hosts["compute-1"].servers}
        owned = {p: {x for s in mine if lab.server_owner[s] == p for x in (s, f"port-{s}")}
                 for p in ("project-a", "project-b")}
        assert owned["project-a"] and owned["project-b"]
        snapshot = {v.virtual_resource_id for v in consumers["alice"].snapshot.virtual_resource_info}  # type: ignore[union-attr]
        assert snapshot and all(lab.server_owner.get(r.removeprefix("port-")) == "project-a" for r in snapshot)
        names = {s.principal.name for s in lab.inspector.registry}
        assert {"keystone:alice@project-a", "keystone:bob@project-b", "admin"} <= names

        lab.cut_link("compute-1")
        await wait_for(lambda: all(consumers[p].of_phase(MARKED_DOWN) for p in consumers), 15, what="notifications")
        assert consumers["alice"].resource_ids() == owned["project-a"]
        assert consumers["bob"].resource_ids() == owned["project-b"]
        assert consumers["admin"].resource_ids() == owned["project-a"] | owned["project-b"]
    finally:
        for c in consumers.values():
            await c.close()


def login(cloud: FakeCloud, user: str, password: str, project: str) -> str:
    """The token a consumer gets from Keystone itself (keystoneauth, as any OpenStack client)."""
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(auth_url=cloud.auth_url, username=user, password=password, user_domain_name="Default",
                       project_id=project)
    return str(session.Session(auth=auth).get_token())


async def test_an_admin_role_token_may_call_admin_calls(keystone_lab: Any) -> None:
    """A token with the admin role (in any project) enables a host and reads Diagnostics, over either
    metadata; a member's token is refused with PERMISSION_DENIED; two different tokens at once are refused."""
    lab, cloud = await keystone_lab(hosts=2, servers_per_host=1)
    boss = cloud.issue_token("carol", "ops", ("admin",))
    member = cloud.issue_token("alice", "project-a", ("member",))
    async with DoctorClient(lab.endpoint, boss) as client:
        info = await client.enable_host("compute-1", force=True)
        assert info.host_id == "compute-1"
        assert (await client.status()).node_id == "lab-inspector"
    async with grpc.aio.insecure_channel(lab.endpoint) as channel:
        hosts = diagnostics_pb2_grpc.HostsStub(channel)
        listed = await hosts.ListHosts(diagnostics_pb2.ListHostsRequest(), metadata=(("x-auth-token", boss),),
                                       timeout=10)
        assert {h.host_id for h in listed.hosts} == {"compute-1", "compute-2"}
        code, details = await code_of(hosts.EnableHost(diagnostics_pb2.EnableHostRequest(host_id="compute-1"),
                                                       metadata=(("x-auth-token", member),), timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "administrator" in details
        code, details = await code_of(hosts.ListHosts(diagnostics_pb2.ListHostsRequest(),
                                                      metadata=(*bearer(member), ("x-auth-token", boss)), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "different tokens" in details
    # the member's own call works, and a static token still works beside Keystone
    assert (await query(lab, (("x-auth-token", member),))) is not None
    assert (await query(lab, bearer(lab.tokens["project-a"]))) is not None


async def test_unknown_and_unscoped_tokens(keystone_lab: Any) -> None:
    """A token neither static nor known to Keystone is UNAUTHENTICATED (asked once, then from the negative
    cache); an unscoped Keystone token is PERMISSION_DENIED with what to do."""
    lab, cloud = await keystone_lab(keystone="negative_cache_s = 60\n", hosts=1, servers_per_host=1)
    for _ in range(5):
        code, details = await code_of(query(lab, bearer("no-such-token")))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown token" in details
    assert len(cloud.validations()) == 1
    code, details = await code_of(query(lab, bearer(cloud.issue_token("dave", None))))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "project-scoped" in details


async def test_a_revoked_token_stops_working_within_the_cache_time(keystone_lab: Any) -> None:
    """Revoked in Keystone, a token is refused once its cache entry (cache_s) ages out."""
    lab, cloud = await keystone_lab(keystone="cache_s = 0.5\nnegative_cache_s = 0.2\n", hosts=1, servers_per_host=1)
    token = cloud.issue_token("alice", "project-a")
    await query(lab, bearer(token))
    cloud.revoke_token(token)
    revoked_at = time.monotonic()

    async def refused() -> bool:
        code, _ = await code_of(query(lab, bearer(token)))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED)
        return code == grpc.StatusCode.UNAUTHENTICATED
    await wait_for(refused, 10, 0.05, "the revoked token to be refused")
    assert time.monotonic() - revoked_at < 10


async def test_keystone_outage_is_unavailable_and_cached_tokens_keep_working(keystone_lab: Any) -> None:
    """Keystone failing: a new token gets UNAVAILABLE saying Keystone is unavailable (not UNAUTHENTICATED),
    a token validated before keeps working; once Keystone is back the new token works."""
    lab, cloud = await keystone_lab(keystone="cache_s = 300\ntimeout_s = 1\n", hosts=1, servers_per_host=1)
    known = cloud.issue_token("alice", "project-a")
    await query(lab, bearer(known))
    cloud.fail("GET", r"^/identity/v3/auth/tokens$", 503, times=10_000)
    fresh = cloud.issue_token("bob", "project-b")
    code, details = await code_of(query(lab, bearer(fresh)))
    assert code == grpc.StatusCode.UNAVAILABLE and "Keystone is unavailable" in details and "503" in details
    assert (await query(lab, (("x-auth-token", known),))) is not None
    cloud.clear_rules()
    assert (await query(lab, bearer(fresh))) is not None


async def test_single_flight_through_grpc(keystone_lab: Any) -> None:
    """100 concurrent calls presenting one new token make one validation request to Keystone."""
    lab, cloud = await keystone_lab(hosts=1, servers_per_host=1)
    await query(lab, bearer(cloud.issue_token("warm", "project-a")))  # the inspector's own login and discovery
    token = cloud.issue_token("alice", "project-a")
    # Keystone takes 1 s to answer: every call sent meanwhile finds the validation under way
    cloud.stall("GET", r"^/identity/v3/auth/tokens$", 1.0)
    async with grpc.aio.insecure_channel(lab.endpoint) as channel:
        stub = fault_pb2_grpc.FaultManagementStub(channel)

        async def call() -> fault_pb2.FaultQueryResponse:
            return await stub.QueryFaults(fault_pb2.FaultQueryRequest(), metadata=bearer(token), timeout=20)
        results = await asyncio.gather(*(call() for _ in range(100)))
    assert len(results) == 100
    assert [r.headers["x-subject-token"] for r in cloud.validations()].count(token) == 1


async def test_reload_ends_streams_whose_keystone_identity_changed(keystone_lab: Any) -> None:
    """After a reload a Keystone stream stays while its token still stands for the same principal; a revoked
    token's stream ends, and an admin's ends when its role is no longer among admin_roles."""
    lab, cloud = await keystone_lab(keystone="cache_s = 0.3\nnegative_cache_s = 0.2\n", hosts=1, servers_per_host=1)
    lab.tokens["alice"] = cloud.issue_token("alice", "project-a")
    lab.tokens["bob"] = cloud.issue_token("bob", "project-b")
    lab.tokens["carol"] = cloud.issue_token("carol", "ops", ("admin", "cloud-admin"))
    lab.tokens["erin"] = cloud.issue_token("erin", "ops", ("admin",))
    subs = {p: await Consumer(lab, p).start() for p in ("alice", "bob", "carol", "erin")}
    try:
        await wait_for(lambda: len(lab.inspector.registry) == 4, 5, what="four subscriptions")
        assert await lab.inspector.reload()
        assert len(lab.inspector.registry) == 4, "an unchanged reload keeps every Keystone stream"

        cloud.revoke_token(lab.tokens["bob"])

        async def learnt() -> bool:  # the inspector learns of the revocation when the token is next presented
            code, _ = await code_of(query(lab, bearer(lab.tokens["bob"])))
            return code == grpc.StatusCode.UNAUTHENTICATED
        await wait_for(learnt, 10, 0.05, "the revocation to be seen")
        streams = {s.principal.name: s for s in lab.inspector.registry}
        cfg = Path(lab.inspector.cfg.path)
        cfg.write_text(cfg.read_text() + 'admin_roles = ["cloud-admin"]\n')
        assert await lab.inspector.reload()
        # the reload itself ended the demoted admin's stream (nothing else ran between the new roles and the check)
        assert streams["keystone:erin@ops"].ended_by == REVOKED
        assert not streams["keystone:carol@ops"].ended_by and not streams["keystone:alice@project-a"].ended_by
        await wait_for(lambda: subs["bob"].error is not None and subs["erin"].error is not None, 10,
                       what="the revoked and demoted streams to end")
        assert subs["alice"].error is None and subs["carol"].error is None
        left = {s.principal.name for s in lab.inspector.registry}
        assert left == {"keystone:alice@project-a", "keystone:carol@ops"}
        assert all(isinstance(subs[p].error, grpc.aio.AioRpcError) for p in ("bob", "erin"))
    finally:
        for c in subs.values():
            await c.close()


async def test_a_live_stream_ends_when_its_token_is_revoked_or_expires(keystone_lab: Any) -> None:
    """Without any reload, a stream opened with a Keystone token ends (UNAUTHENTICATED) once Keystone revokes
    the token, or the token expires; other streams go on, and an outage of Keystone ends none."""
    lab, cloud = await keystone_lab(keystone="cache_s = 0.3\nnegative_cache_s = 0.2\n", hosts=1, servers_per_host=1)
    lab.tokens["alice"] = cloud.issue_token("alice", "project-a")
    lab.tokens["bob"] = cloud.issue_token("bob", "project-b")
    lab.tokens["dave"] = cloud.issue_token("dave", "project-b", expires_in=3.0)
    subs = {p: await Consumer(lab, p).start() for p in ("alice", "bob", "dave", "project-a")}
    try:
        cloud.fail("GET", r"^/identity/v3/auth/tokens$", 503, times=10_000)
        outage = len(cloud.validations())
        await wait_for(lambda: len(cloud.validations()) >= outage + 3, 10, what="checks during the outage")
        assert all(s.error is None for s in subs.values()), "an outage of Keystone ended a stream"
        cloud.clear_rules()

        cloud.revoke_token(lab.tokens["bob"])
        await wait_for(lambda: subs["bob"].error is not None and subs["dave"].error is not None, 15,
                       what="the revoked and the expired token's streams to end")
        assert isinstance(subs["bob"].error, grpc.aio.AioRpcError)
        assert subs["bob"].error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Keystone revoked" in (subs["bob"].error.details() or "")
        assert subs["alice"].error is None and subs["project-a"].error is None
        assert {s.principal.name for s in lab.inspector.registry} == {"keystone:alice@project-a", "project-a"}
    finally:
        for c in subs.values():
            await c.close()

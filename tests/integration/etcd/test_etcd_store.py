"""Fenced leader state and the recovery journal (inspector/ha/etcd_store.py) against a real etcd."""

from __future__ import annotations

import pytest

from doctor_common.api import fault_pb2
from doctor_common.etcd_guard import NotLeader, TokenGuard
from inspector.ha.election import Election
from inspector.ha.etcd_config import EtcdClient, connect
from inspector.ha.etcd_store import RECOVERY_STEPS, EtcdStore, Step, json_codec, proto_codec
from inspector.response.durable import EtcdDurable
from tests.etcd_cluster import EtcdCluster
from tests.integration.etcd.conftest import keys_under, make_config


async def leader(client: EtcdClient, cluster: EtcdCluster, prefix: str, node: str) -> Election:
    e = Election(client, make_config(cluster, prefix), node_id=node, endpoint=f"{node}:1")
    e.start()
    await e.wait_leader(timeout=5)
    return e


async def test_state_and_collections_round_trip_and_leave_no_keys(etcd1: EtcdCluster, prefix: str,
                                                                  admin: EtcdClient) -> None:
    """put/get/get_prefix/delete and JSON / protobuf collections work for the leader and clean up after themselves."""
    e = await leader(admin, etcd1, prefix, "a")
    store = EtcdStore(admin, prefix, e, node_id="a")
    try:
        await store.put("hosts/c1", b"up")
        await store.put("hosts/c2", b"down")
        await store.put("other", b"x")
        assert await store.get("hosts/c1") == b"up"
        assert await store.get_prefix("hosts/") == {"hosts/c1": b"up", "hosts/c2": b"down"}
        alarms = store.collection("alarms", *proto_codec(fault_pb2.FaultNotification))
        await alarms.put("al-1", fault_pb2.FaultNotification(notification_id="al-1", fenced=True))
        subs = store.collection("subscriptions", *json_codec())
        await subs.put("s1", {"project": "p1", "filter": {"fault_type": ["compute.host.*"]}})
        assert (await alarms.get("al-1")).fenced is True  # type: ignore[union-attr]
        assert await subs.items() == {"s1": {"project": "p1", "filter": {"fault_type": ["compute.host.*"]}}}
        assert await keys_under(admin, prefix) == ["alarms/al-1", "leader", "state/hosts/c1", "state/hosts/c2",
                                                   "state/other", "subscriptions/s1"]
        for k in ("hosts/c1", "hosts/c2", "other"):
            await store.delete(k)
        await alarms.delete("al-1")
        await subs.delete("s1")
        assert await store.get("hosts/c1") is None and await alarms.get("al-1") is None
        with pytest.raises(ValueError):
            store.collection("log", *json_codec())  # reserved for the notification log
    finally:
        await e.close()
    assert await keys_under(admin, prefix) == []


async def test_follower_and_stale_token_writes_are_refused(etcd1: EtcdCluster, prefix: str,
                                                           admin: EtcdClient) -> None:
    """A follower's store raises NotLeader without writing; a stale fencing token is refused by etcd itself."""
    cfg = make_config(etcd1, prefix)
    async with connect(cfg) as cb:
        a = await leader(admin, etcd1, prefix, "a")
        b = Election(cb, cfg, node_id="b", endpoint="b:1")
        b.start()
        try:
            follower = EtcdStore(cb, prefix, b, node_id="b")
            assert (await b.current_leader()).node_id == "a"  # type: ignore[union-attr]
            with pytest.raises(NotLeader, match="the leader is a at a:1"):
                await follower.put("k", b"from-follower")
            forged = EtcdStore(cb, prefix, TokenGuard(cb, b.leader_key, a.token + 1))  # type: ignore[operator]
            with pytest.raises(NotLeader, match="held by a"):
                await forged.put("k", b"forged")
            assert await follower.get("k") is None
        finally:
            await a.close()
            await b.close()
    assert await keys_under(admin, prefix) == []


async def test_recovery_journal_records_each_step_once_and_survives_a_leader_change(
        etcd1: EtcdCluster, prefix: str, admin: EtcdClient) -> None:
    """A new leader sees the incident the old one began, with its steps in order, and finishes the rest; each step is recorded once."""
    cfg = make_config(etcd1, prefix)
    async with connect(cfg) as ca, connect(cfg) as cb:
        a = await leader(ca, etcd1, prefix, "a")
        b = Election(cb, cfg, node_id="b", endpoint="b:1")
        b.start()
        sa = EtcdStore(ca, prefix, a, node_id="a")
        assert await sa.open_incident("inc-1", {"host": "compute-1", "fault": "compute.host.down"}) is True
        assert await sa.open_incident("inc-1", {"host": "other"}) is False
        assert await sa.record_step("inc-1", Step.NOTIFY_SUSPECTED) is True
        assert await sa.record_step("inc-1", Step.FENCE, {"bmc": "10.0.0.9"}) is True
        assert await sa.record_step("inc-1", Step.CONFIRM_OFF) is True
        assert await sa.record_step("inc-1", Step.FENCE) is False  # exactly once
        token_a = a.token
        await a.close()

        term_b = await b.wait_leader(timeout=5)
        sb = EtcdStore(cb, prefix, b, node_id="b")
        open_ = await sb.incidents()
        assert list(open_) == ["inc-1"]
        inc = open_["inc-1"]
        assert inc.data == {"host": "compute-1", "fault": "compute.host.down"}
        assert [(s.step, s.node_id, s.token) for s in inc.steps] == [
            ("notify_suspected", "a", token_a), ("fence", "a", token_a), ("confirm_off", "a", token_a)]
        assert inc.steps[1].detail == {"bmc": "10.0.0.9"}
        assert inc.pending() == ["notify_fenced", "mark_down", "servers_error", "notify"]
        journal = EtcdDurable(sb)  # what a leader asks when an append raised: was the step applied anyway?
        assert await journal.recorded("inc-1", Step.NOTIFY_SUSPECTED)
        assert not await journal.recorded("inc-1", Step("mark_down"))
        for step in await sb.pending_steps("inc-1"):
            assert await sb.record_step("inc-1", step) is True
        assert [s.step for s in await sb.steps("inc-1")] == [str(s) for s in RECOVERY_STEPS]
        assert {s.token for s in (await sb.steps("inc-1"))[3:]} == {term_b.token}
        assert await sb.record_step("inc-1", Step.NOTIFY) is False
        # the old leader can no longer add to the journal
        with pytest.raises(NotLeader):
            await sa.record_step("inc-1", "extra")
        await sb.close_incident("inc-1")
        assert await sb.incidents() == {}
        await b.close()
    assert await keys_under(admin, prefix) == []

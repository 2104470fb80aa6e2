"""Bad input gets the right status code and a message saying what to fix; the daemon keeps serving."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import pytest

from doctor_common.api import agent_pb2, agent_pb2_grpc, common_pb2, fault_pb2, fault_pb2_grpc
from doctor_common.client import DoctorClient
from doctor_common.grpcutil import auth_metadata
from doctor_common.lab.cloud import Lab, wait_for

from .conftest import GHOST_TOKEN

OK = agent_pb2.COMPONENT_STATUS_OK


def hello(host: str, boot: str = "boot-1", **kw) -> agent_pb2.AgentMessage:  # type: ignore[no-untyped-def]
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(host_id=host, boot_id=boot, agent_version="t", **kw))


async def agent_stream(lab: Lab, token: str | None, *msgs: agent_pb2.AgentMessage) -> grpc.aio.AioRpcError:
    """Send these messages on a Connect stream and return the status the inspector ends it with."""
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(token))
        for m in msgs:
            await call.write(m)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
            await call
        return err.value


async def assert_still_serving(lab: Lab) -> None:
    async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as c:
        assert (await c.status()).role == "standalone"


@pytest.mark.parametrize("token, code, words", [
    (None, grpc.StatusCode.UNAUTHENTICATED, "authorization: Bearer"),
    ("nobody-knows-me", grpc.StatusCode.UNAUTHENTICATED, "unknown token"),
])
async def test_consumers_without_valid_token_are_refused(lab: Lab, token, code, words) -> None:  # type: ignore[no-untyped-def]
    """Subscribe and QueryFaults without a known bearer token: UNAUTHENTICATED, saying how to authenticate."""
    async with DoctorClient(lab.endpoint, token) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.query_faults()
        assert err.value.code() == code and words in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in c.subscribe_once():
                pass
        assert err.value.code() == code
    await assert_still_serving(lab)


@pytest.mark.parametrize("flt, code, words", [
    (fault_pb2.SubscribeFilter(virtual_resource_id=["vm-1-2"]), grpc.StatusCode.PERMISSION_DENIED, "another project"),
    (fault_pb2.SubscribeFilter(virtual_resource_id=["vm-9-9"]), grpc.StatusCode.NOT_FOUND, "does not exist"),
    (fault_pb2.SubscribeFilter(fault_type=["compute.(host)"]), grpc.StatusCode.INVALID_ARGUMENT, "wildcards"),
    (fault_pb2.SubscribeFilter(min_severity=99), grpc.StatusCode.INVALID_ARGUMENT, "min_severity"),
])
async def test_bad_or_foreign_filters(lab: Lab, flt, code, words) -> None:  # type: ignore[no-untyped-def]
    """project-a may not subscribe to project-b's server, nor to nothing, nor with a broken pattern."""
    assert lab.server_owner["vm-1-2"] == "project-b"
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in c.subscribe_once(flt):
                pass
        assert err.value.code() == code and words in err.value.details()
    await assert_still_serving(lab)


async def test_host_status_of_a_foreign_server_is_denied(lab: Lab) -> None:
    """GetServerHostStatus answers for one's own server and refuses another project's."""
    async with DoctorClient(lab.endpoint, lab.tokens["project-a"]) as c:
        own = await c.server_host_status("vm-1-1")
        assert own.host == "compute-1" and own.host_status == common_pb2.HOST_STATUS_UP
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.server_host_status("vm-1-2")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_agent_identity_and_protocol_errors(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    """Wrong host for the token, unknown host, no Hello first, a second Hello, a bad event: each its own status.
    The refused identities are on the audit trail (an agent speaking for another host), without the token."""
    caplog.set_level(logging.INFO, logger="doctor.audit")
    token1 = lab.hosts["compute-1"].agent_token
    cases = [
        ((None, hello("compute-1")), grpc.StatusCode.UNAUTHENTICATED, "missing agent credentials"),
        ((token1, hello("compute-2")), grpc.StatusCode.PERMISSION_DENIED, "belongs to host 'compute-1'"),
        ((GHOST_TOKEN, hello("ghost")), grpc.StatusCode.NOT_FOUND, "not in the controller's inventory"),
        ((token1, agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())), grpc.StatusCode.INVALID_ARGUMENT,
         "must be Hello"),
        ((token1, hello("")), grpc.StatusCode.INVALID_ARGUMENT, "hello.host_id"),
        ((token1, hello("compute-1"), hello("compute-1")), grpc.StatusCode.INVALID_ARGUMENT, "only once"),
        ((token1, hello("compute-1"), agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=[agent_pb2.Event(
            sequence=1, state=agent_pb2.ComponentState(component="nic:eth0", status=42))]))),
         grpc.StatusCode.INVALID_ARGUMENT, "events[0].state.status 42"),
        ((token1, hello("compute-1", components=[agent_pb2.ComponentState(
            component="x", status=agent_pb2.COMPONENT_STATUS_FAULT)])),
         grpc.StatusCode.INVALID_ARGUMENT, "fault_type is required"),
        ((token1, hello("compute-1"), agent_pb2.AgentMessage(health=agent_pb2.AgentHealth(checkers=[
            agent_pb2.CheckerHealth(checker="exec", checks=[agent_pb2.CheckRuns(
                check="raid", recent=[agent_pb2.CheckRun(outcome="ok")] * 9)])]))),
         grpc.StatusCode.INVALID_ARGUMENT, "health.checkers[0].checks[0]: check must be 1-255 characters, at most 8"),
    ]
    for (token, *msgs), code, words in cases:
        err = await agent_stream(lab, token, *msgs)
        assert (err.code(), words in err.details()) == (code, True), (err.code(), err.details())
    rejected = [r.fields for r in caplog.records if r.name == "doctor.audit"  # type: ignore[attr-defined]
                and r.fields.get("event") == "rejected"]  # type: ignore[attr-defined]
    assert [r["kind"] for r in rejected] == ["missing_token", "wrong_host"], rejected
    assert "belongs to host 'compute-1', not 'compute-2'" in str(rejected[1]["reason"])
    assert not any(token1 in r.getMessage() or token1 in str(getattr(r, "fields", "")) for r in caplog.records)
    await assert_still_serving(lab)


async def test_undecodable_and_oversized_requests(lab: Lab) -> None:
    """Garbage bytes get INVALID_ARGUMENT naming the message type; over 4 MiB gets RESOURCE_EXHAUSTED."""
    md = auth_metadata(lab.tokens["admin"])
    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        raw = ch.unary_unary("/doctor.v1.FaultManagement/QueryFaults")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff\xff", metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "FaultQueryRequest" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\x00" * (5 * 1024 * 1024), metadata=md)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        raw_stream = ch.stream_stream("/doctor.v1.AgentGateway/Connect")
        call = raw_stream(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await call.write(b"\xff\xfe")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot decode a message of /doctor.v1.AgentGateway/Connect" in (err.value.details() or "")
        # garbage after a good Hello: the stream's own check names it too (no per-message decoding hop)
        call = raw_stream(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
        await call.write(hello("compute-1", boot="g").SerializeToString())
        await call.write(b"\xff\xfe")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cannot decode" in (err.value.details() or "")
    await assert_still_serving(lab)


async def test_resent_events_are_processed_once_and_acked(lab: Lab) -> None:
    """After a reconnect in the same boot, an agent resends unacked events: the inspector acks them all but
    acts only on the ones it has not processed yet."""
    token = lab.hosts["compute-1"].agent_token

    def ev(seq: int, comp: str) -> agent_pb2.Event:
        return agent_pb2.Event(sequence=seq, state=agent_pb2.ComponentState(
            component=comp, status=agent_pb2.COMPONENT_STATUS_WARNING, fault_type="compute.host.sensor.warning",
            severity=common_pb2.SEVERITY_WARNING))

    async def session(events: list[agent_pb2.Event]) -> int:
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(token))
            await call.write(hello("compute-1", boot="b"))
            await call.write(agent_pb2.AgentMessage(events=agent_pb2.EventBatch(events=events)))
            async for msg in call:
                if msg.WhichOneof("kind") == "ack":
                    call.cancel()
                    return msg.ack.sequence
        raise AssertionError("no ack")

    assert await session([ev(1, "sensor:a")]) == 1
    assert await session([ev(1, "sensor:a"), ev(2, "sensor:b")]) == 2
    rec = lab.inspector.liveness.hosts["compute-1"]
    assert rec.last_sequence == 2 and set(rec.components) == {"sensor:a", "sensor:b"}
    from doctor_common.lab.cloud import wait_for
    await wait_for(lambda: len([a for a in lab.inspector.alarms if a.component.startswith("sensor:")]) == 2, 5,
                   what="two sensor alarms")

    async def sensor_notices() -> list[str]:
        logged = await lab.inspector.log.read(0, lab.inspector.log.last_sequence)
        return [n.physical_resource_info[0].faults[0].managed_object_id for n in logged
                if n.physical_resource_info[0].faults[0].fault_type == "compute.host.sensor.warning"]

    async def both_logged() -> bool:  # an alarm is raised before the log's append of its notice completes
        return len(await sensor_notices()) >= 2
    await wait_for(both_logged, 5, what="the two warnings in the log")
    await asyncio.sleep(0.2)  # every chance for a duplicate to land
    assert len(await sensor_notices()) == 2, "each warning notified exactly once, though event 1 was sent twice"


async def test_a_fault_healed_in_the_same_batch_leaves_no_alarm(lab: Lab) -> None:
    """A flap within one batch (warning, then OK, of one component): the warning is notified and then cleared,
    though its response had not raised the alarm yet when the OK was read."""
    from doctor_common.lab.cloud import wait_for

    token = lab.hosts["compute-1"].agent_token

    def ev(seq: int, status: int) -> agent_pb2.Event:
        warning = status == agent_pb2.COMPONENT_STATUS_WARNING
        return agent_pb2.Event(sequence=seq, state=agent_pb2.ComponentState(
            component="sensor:flap", status=status, fault_type="compute.host.sensor.warning" if warning else "",
            severity=common_pb2.SEVERITY_WARNING if warning else common_pb2.SEVERITY_INDETERMINATE))

    async with grpc.aio.insecure_channel(lab.endpoint) as ch:
        call = agent_pb2_grpc.AgentGatewayStub(ch).Connect(metadata=auth_metadata(token))
        await call.write(hello("compute-1", boot="b"))
        await call.write(agent_pb2.AgentMessage(events=agent_pb2.EventBatch(
            events=[ev(1, agent_pb2.COMPONENT_STATUS_WARNING), ev(2, agent_pb2.COMPONENT_STATUS_OK)])))

        async def warning_and_clearing() -> list[common_pb2.AlarmState.ValueType] | None:
            logged = await lab.inspector.log.read(0, lab.inspector.log.last_sequence)
            states = [f.state for n in logged for f in n.physical_resource_info[0].faults
                      if f.fault_type == "compute.host.sensor.warning"]
            return states if len(states) >= 2 else None
        states = await wait_for(warning_and_clearing, 5, 0.01, "the warning and its clearing")
        call.cancel()
    assert states == [common_pb2.ALARM_STATE_FIRED, common_pb2.ALARM_STATE_CLEARED]
    assert lab.inspector.alarms.by_component("compute-1", "sensor:flap") is None


@pytest.mark.parametrize("max_batch", [0, 100])
async def test_slow_consumer_is_cut_off_without_delaying_others(lab: Lab, max_batch: int) -> None:
    """A subscriber that stops reading is ended with RESOURCE_EXHAUSTED (telling it where to resume) while a
    reading subscriber receives every notification. The cursor it is given is the last notice it received,
    whether they came one per message or in batches."""
    token = lab.tokens["admin"]
    agent_token = lab.hosts["compute-1"].agent_token
    # a small HTTP/2 window, so the slow reader's backlog reaches the server's queue quickly
    slow_ch = grpc.aio.insecure_channel(lab.endpoint, options=[("grpc.http2.bdp_probe", 0)])
    slow = fault_pb2_grpc.FaultManagementStub(slow_ch).Subscribe(fault_pb2.SubscribeRequest(max_batch=max_batch),
                                                                 metadata=auth_metadata(token))
    assert (await slow.read()).WhichOneof("kind") == "subscribed"
    fast_got: list[int] = []
    async with DoctorClient(lab.endpoint, token) as fast:
        async def read_fast() -> None:
            async for msg in fast.subscribe_once():
                if msg.WhichOneof("kind") == "fault":
                    fast_got.append(msg.fault.sequence)
        reader = asyncio.create_task(read_fast())
        from doctor_common.lab.cloud import wait_for
        await wait_for(lambda: len(lab.inspector.registry) == 2, 5, what="two subscribers")
        total = 0
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            report = agent_pb2_grpc.AgentGatewayStub(ch).ReportJson
            for batch in range(40):  # bursts of 25, each sent once the fast consumer has caught up
                events = ",".join(
                    f'{{"time": "2026-01-01T00:00:00", "type": "compute.host.sensor.warning", "details": '
                    f'{{"hostname": "compute-1", "severity": "warning", "monitor_id": "m{batch}-{i}"}}}}'
                    for i in range(25))
                ack = await report(agent_pb2.JsonEventReport(json=f'{{"events": [{events}]}}'),
                                   metadata=auth_metadata(agent_token))
                total += ack.accepted
                await wait_for(lambda: len(fast_got) == total, 10, what="the fast consumer to keep up")
        # the slow subscriber is cut off; the fast one remains
        await wait_for(lambda: len(lab.inspector.registry) == 1, 5, what="the slow subscriber to be cut off")
        reader.cancel()
    assert fast_got == sorted(fast_got) and len(set(fast_got)) == total
    # the slow consumer gets what was in flight, then the status telling it where to resume
    slow_got: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        for _ in range(total + 1):
            msg = await slow.read()
            if msg is grpc.aio.EOF:
                await slow
            if msg.WhichOneof("kind") == "batch":
                slow_got.extend(m.fault.sequence for m in msg.batch.messages)
            else:
                slow_got.append(msg.fault.sequence)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "resume_after=" in err.value.details()
    cursor = int(err.value.details().rsplit("resume_after=", 1)[1])
    assert slow_got and cursor == slow_got[-1] < total
    await slow_ch.close()
    # resuming there loses nothing and repeats nothing
    async with DoctorClient(lab.endpoint, token) as again:
        rest: list[int] = []
        async for msg in again.subscribe_once(resume_after=cursor):
            if msg.WhichOneof("kind") == "fault":
                rest.append(msg.fault.sequence)
                if msg.fault.sequence == fast_got[-1]:
                    break
    assert slow_got + rest == fast_got
    await assert_still_serving(lab)


async def test_a_reconnect_storm_is_admitted_at_the_rate_handshakes_finish() -> None:
    """With max_handshakes = 1 and that one handshake in progress, an agent's Hello is turned away at once with
    UNAVAILABLE ("busy ... retry"), not queued; once the handshake is over, the next is admitted. A stream that
    has not said Hello holds no place. Subscriptions give their place back once set up: they never run out."""
    lab = Lab(hosts=2, servers_per_host=1, netns=False)
    write = lab.write_files

    def with_one_handshake() -> Path:
        cfg = write()
        cfg.write_text(cfg.read_text().replace("[inspector]\n", "[inspector]\nmax_handshakes = 1\n", 1))
        return cfg
    lab.write_files = with_one_handshake  # type: ignore[method-assign]
    await lab.start(agents=False)
    try:
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            stub = agent_pb2_grpc.AgentGatewayStub(ch)
            silent = stub.Connect(metadata=auth_metadata(lab.hosts["compute-1"].agent_token))
            await silent.wait_for_connection()  # says nothing: holds no place
            admission = lab.inspector.agent_admission
            assert admission.active == 0
            assert admission.enter()  # a handshake in progress (a Hello being reconciled)
            second = stub.Connect(metadata=auth_metadata(lab.hosts["compute-2"].agent_token))
            await second.write(hello("compute-2", boot="b2"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await second.read()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "busy" in (err.value.details() or "")
            admission.leave()  # that handshake is over
            third = stub.Connect(metadata=auth_metadata(lab.hosts["compute-2"].agent_token))
            await third.write(hello("compute-2", boot="b3"))
            assert (await third.read()).WhichOneof("kind") == "config"
            await wait_for(lambda: admission.active == 0, 5, 0.01, "its place given back")
            silent.cancel()
            third.cancel()
        for _ in range(3):  # one at a time is enough for subscriptions set up one after the other
            async with DoctorClient(lab.endpoint, lab.tokens["admin"]) as c:
                msg = await c.subscribe_once().__anext__()
                assert msg.WhichOneof("kind") == "subscribed"
        assert lab.inspector.subscription_admission.active <= 1
        assert lab.inspector.agent_admission.refused == 1
        subs = lab.inspector.subscription_admission
        await wait_for(lambda: subs.active == 0, 5, 0.01, "every subscription set up")
        assert subs.enter()  # a subscription being set up (its snapshot being written)
        async with grpc.aio.insecure_channel(lab.endpoint) as ch:
            refused = fault_pb2_grpc.FaultManagementStub(ch).Subscribe(
                fault_pb2.SubscribeRequest(), metadata=auth_metadata(lab.tokens["admin"]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await refused.read()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "busy" in (err.value.details() or "")
            assert ("retry-after-ms", "200") in tuple(err.value.trailing_metadata() or ())
            subs.leave()
            admitted = fault_pb2_grpc.FaultManagementStub(ch).Subscribe(
                fault_pb2.SubscribeRequest(), metadata=auth_metadata(lab.tokens["admin"]))
            assert (await admitted.read()).WhichOneof("kind") == "subscribed"
            admitted.cancel()
        assert subs.refused == 1
    finally:
        await lab.close()

"""The pure parts of finding the serving replica: endpoint lists, reading gRPC's reasons and a follower's hint,
where a broken stream reconnects."""

from __future__ import annotations

import argparse
import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from doctor_common.client import DoctorClient
from doctor_common.ctl_shell import DEFAULT_ENDPOINT, UsageError, endpoint_list, endpoints_from
from doctor_common.failover import Endpoints, Unreachable, leader_hint, leader_trailer, never_connected, pause_s


def error(code: grpc.StatusCode, details: str, trailer: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailer), details)


def test_endpoint_lists_split_on_commas_and_refuse_what_grpc_cannot_dial() -> None:
    """HOST:PORT, [V6]:PORT and unix:PATH pass (comma-separated); a bare name, a missing or bad port, an empty
    item are refused saying what to give."""
    assert endpoint_list("10.0.0.1:50051, ctl-2.site:50051,[fd00::1]:50051,unix:/run/doctor.sock") == [
        "10.0.0.1:50051", "ctl-2.site:50051", "[fd00::1]:50051", "unix:/run/doctor.sock"]
    for bad in ("inspector-1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:70000", "a:1,,b:2", "unix:", "http://a:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="give HOST:PORT or unix:PATH"):
            endpoint_list(bad)


def test_endpoints_come_from_the_flag_then_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCTOR_ENDPOINTS", raising=False)
    monkeypatch.delenv("DOCTOR_ENDPOINT", raising=False)
    assert endpoints_from(None) == [DEFAULT_ENDPOINT]
    monkeypatch.setenv("DOCTOR_ENDPOINT", "a:1")
    assert endpoints_from(None) == ["a:1"]
    monkeypatch.setenv("DOCTOR_ENDPOINTS", "b:1,c:1")
    assert endpoints_from(None) == ["b:1", "c:1"]
    assert endpoints_from([["d:1", "e:1"], ["f:1"]]) == ["d:1", "e:1", "f:1"]
    monkeypatch.setenv("DOCTOR_ENDPOINTS", "b")
    with pytest.raises(UsageError, match=r"\$DOCTOR_ENDPOINTS: 'b'"):
        endpoints_from(None)


def test_grpcs_words_for_a_call_that_never_left() -> None:
    """A refused connection, a missing socket, an unknown name never reached a server; a server's UNAVAILABLE
    ("try again") did."""
    assert never_connected(error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: "
                                 "UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
                                 )) == "connection refused"
    assert never_connected(error(grpc.StatusCode.UNAVAILABLE, "errors resolving x.invalid:5: [field:hostname lookup "
                                 "error:address lookup failed for x.invalid:5: Domain name not found]"
                                 )) == "domain name not found"
    assert never_connected(error(grpc.StatusCode.UNAVAILABLE, "not recorded, nothing changed; try again: x")) is None
    assert never_connected(error(grpc.StatusCode.NOT_FOUND, "failed to connect")) is None


def test_a_followers_trailer() -> None:
    """Absent: None; present but empty (no leader known): "" (and no hint); naming one: that endpoint."""
    assert leader_trailer(error(grpc.StatusCode.UNAVAILABLE, "x")) is None
    empty = error(grpc.StatusCode.UNAVAILABLE, "x", (("doctor-leader", ""),))
    assert leader_trailer(empty) == "" and leader_hint(empty) is None
    named = error(grpc.StatusCode.UNAVAILABLE, "x", (("doctor-leader", "10.0.0.2:50051"),))
    assert leader_trailer(named) == leader_hint(named) == "10.0.0.2:50051"


def test_a_broken_stream_reconnects_at_the_leader_named_else_the_next_replica() -> None:
    eps = Endpoints(["a:1", "b:1", "c:1", "a:1"])
    assert eps.configured == ["a:1", "b:1", "c:1"] and eps.current == "a:1"
    eps.moved(error(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert eps.current == "b:1"
    eps.moved(error(grpc.StatusCode.UNAVAILABLE, "x", (("doctor-leader", "z:9"),)))
    assert eps.current == "z:9"  # where the follower points, listed or not
    eps.moved(error(grpc.StatusCode.UNAVAILABLE, "x", (("doctor-leader", "z:9"),)))
    assert eps.current == "z:9"  # it names itself: taking over, stay
    eps.moved(error(grpc.StatusCode.UNAVAILABLE, "x", (("doctor-leader", ""),)))
    assert eps.current == "a:1"  # a replica it was sent to failed: start the list again
    with pytest.raises(ValueError):
        Endpoints([])


def test_unreachable_is_an_unavailable_naming_each_endpoint() -> None:
    exc = Unreachable("no inspector could be reached", {"a:1": "connection refused", "b:1": "a follower"})
    assert isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
    assert exc.details() == "no inspector could be reached (tried a:1: connection refused; b:1: a follower)"


def test_a_pause_is_jittered_and_never_shorter_than_a_busy_servers_retry_after() -> None:
    pauses = [pause_s(0.4) for _ in range(200)]
    assert all(0.2 <= p <= 0.4 for p in pauses) and len(set(pauses)) > 100  # clients turned away together spread
    busy = error(grpc.StatusCode.UNAVAILABLE, "busy", (("retry-after-ms", "200"),))
    assert all(0.2 <= pause_s(0.05, busy) <= 0.3 for _ in range(100))
    garbled = error(grpc.StatusCode.UNAVAILABLE, "busy", (("retry-after-ms", "soon"),))
    assert all(0.025 <= pause_s(0.05, garbled) <= 0.05 for _ in range(100))


async def test_consumers_given_every_replica_open_their_streams_across_them() -> None:
    """Any replica serves Subscribe: clients given the same list with ``spread`` start their first stream at a
    replica drawn at random (``Endpoints.streams_from``); unary calls still start at the first listed, and
    without ``spread`` streams do too (gRPC's pick_first)."""
    servers, ports, streams = [], [], [0, 0, 0]

    class Counting(health.aio.HealthServicer):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        async def Watch(self, request, context):  # type: ignore[no-untyped-def]
            streams[self.index] += 1
            await context.write(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING))
            await asyncio.Event().wait()  # held open until the client leaves

    try:
        for i in range(3):
            server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(Counting(i), server)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            servers.append(server)
        replicas = [f"127.0.0.1:{p}" for p in ports]
        for _ in range(30):  # each starts at one of three: all at one replica has odds of 3 in 3**30
            async with DoctorClient(replicas, "token", spread=True) as client:
                assert client.endpoint == replicas[0]  # unary calls: the list's order
                stream = client._stream(lambda ch: health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest()))
                assert (await anext(stream)).status == health_pb2.HealthCheckResponse.SERVING
                assert client._eps.streams_from in replicas and client.endpoint == client._eps.streams_from
                await stream.aclose()
        assert sum(streams) == 30 and sum(1 for n in streams if n) >= 2, streams
        before = list(streams)
        for _ in range(5):
            async with DoctorClient(replicas, "token") as client:
                stream = client._stream(lambda ch: health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest()))
                await anext(stream)
                await stream.aclose()
        assert streams == [before[0] + 5, before[1], before[2]]  # without spread: the first listed
    finally:
        for server in servers:
            await server.stop(0)

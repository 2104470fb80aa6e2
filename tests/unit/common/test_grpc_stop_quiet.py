"""A server stopping with streams still open logs no ERROR per stream (grpc.aio's cancelled close-waiters); every
other record of grpc.aio's logger still passes (doctor_common/grpcutil.quiet_stop_cancellations)."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from doctor_common.grpcutil import _StopCancellations, quiet_stop_cancellations

STREAMS = 300  # grpc.aio logged for about one in fifteen open streams at its stop here


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _open_streams_then_stop() -> None:
    """``STREAMS`` Health.Watch streams open on a real server, then the server stops."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        calls = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                 for _ in range(STREAMS)]
        for call in calls:
            await call.read()  # each stream is open on the server
        await server.stop(0.05)
    finally:
        await channel.close()


def stop_errors() -> list[logging.LogRecord]:
    """grpc.aio's ERROR records from the stop and the end of the loop (its leftover tasks are cancelled then,
    as when a daemon's ``asyncio.run`` returns)."""
    logger = logging.getLogger("grpc._cython.cygrpc")
    seen = Records()
    logger.addHandler(seen)
    try:
        asyncio.run(_open_streams_then_stop())
    finally:
        logger.removeHandler(seen)
    return [r for r in seen.records if r.levelno >= logging.ERROR]


def test_a_stop_with_open_streams_logs_no_error() -> None:
    quiet_stop_cancellations()
    quiet_stop_cancellations()  # once per process, however often asked
    assert sum(isinstance(f, _StopCancellations) for f in logging.getLogger("grpc._cython.cygrpc").filters) == 1
    assert stop_errors() == []


@pytest.mark.parametrize("exc, passes", [(asyncio.CancelledError(), False), (RuntimeError("a handler's bug"), True)])
def test_only_the_cancellations_are_dropped(exc: BaseException, passes: bool) -> None:
    record = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, __file__, 1,
                               "Exception not handled by _handle_exceptions in servicer method [%s]", ("/x/Y",),
                               (type(exc), exc, None))
    assert _StopCancellations().filter(record) is passes
    other = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, __file__, 1, "something else", (), None)
    assert _StopCancellations().filter(other) is True

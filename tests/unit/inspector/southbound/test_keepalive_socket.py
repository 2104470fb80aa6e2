"""The kernel keeps a silent peer's connection until the keepalive has closed it and it has been looked at.

gRPC sets a server connection's TCP_USER_TIMEOUT from ``grpc.keepalive_timeout_ms``. When that was the ping
timeout, the kernel could destroy a silent peer's connection itself, before gRPC's keepalive closed it (data sent
before the ping had been unacknowledged that long already): no socket left, so ``tcp_peer`` judged the silence an
agent's death and the host was never declared unreachable. Measured on a real server's accepted socket.
"""

from __future__ import annotations

import os
import socket

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from doctor_common.grpcutil import server_options
from inspector.southbound.tcp_peer import LOOKS_S

BUSY_LOOP_MS = 1000  # time for a loaded inspector's loop to get to the closed stream's judgement


def accepted_user_timeouts(port: int) -> list[int]:
    """TCP_USER_TIMEOUT (ms) of this process's established sockets whose local port is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(fields[9])
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        if target.startswith("socket:[") and target[len("socket:["):-1] in inodes:
            with socket.socket(fileno=os.dup(int(fd))) as sock:
                found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    return found


@pytest.mark.parametrize(("keepalive_ms", "ping_timeout_ms"), [
    (500, 1000),      # the chain lab's (liveness timeout 1 s)
    (750, 1500),      # the inspector's defaults
    (50, 100),        # about the smallest the configuration accepts
    (60_000, 90_000), # the largest keepalive
])
async def test_the_kernel_outlasts_the_keepalive_and_the_judgement(keepalive_ms: int, ping_timeout_ms: int) -> None:
    server = grpc.aio.server(options=server_options(keepalive_ms=keepalive_ms, ping_timeout_ms=ping_timeout_ms))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            timeouts = accepted_user_timeouts(port)
    finally:
        await server.stop(None)
    assert len(timeouts) == 1, timeouts
    # a silent peer's connection is closed by the keepalive at most keepalive + ping timeout after the peer's last
    # word; its socket must still be there for every look tcp_peer takes, on a busy loop
    needed = keepalive_ms + ping_timeout_ms + 1000 * sum(LOOKS_S) + BUSY_LOOP_MS
    assert timeouts[0] >= needed, f"TCP_USER_TIMEOUT {timeouts[0]} ms: the kernel may destroy the connection first"

"""What TLS costs on the inspector's gRPC: a new connection's first call, and a call on an open channel.

A grpc.aio server with the health service listens on loopback three ways, built by ``inspector.tls``
exactly as the inspector builds its listeners (so the certificate fetcher's stat per handshake is
included): plaintext, server TLS, and TLS demanding a client certificate (mutual). Clients: grpcio
(consumers, doctorctl, the replicas' probe) and grpclib (the agent). Certificates are made at run
time (P-256, tests/tls_certs.py). Prints medians and p99 in milliseconds, then one JSON line.

    .venv/bin/python bench/tls_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpclib.client import Channel
from grpclib.const import Cardinality

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/ makes the certificates

from doctor_common.grpc_tls import secure_channel  # noqa: E402
from doctor_common.tls import ClientTls  # noqa: E402
from inspector.tls import TlsConfig, server_listeners  # noqa: E402
from tests.tls_certs import Pki  # noqa: E402

CHECK = "/grpc.health.v1.Health/Check"


def ms(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return round(statistics.median(s) * 1000, 3), round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3)


async def grpcio_connect(target: str, tls: ClientTls | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with secure_channel(target, tls) as ch:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        out.append(time.perf_counter() - t)
    return out


async def grpcio_calls(target: str, tls: ClientTls | None, n: int) -> list[float]:
    out = []
    async with secure_channel(target, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        for _ in range(n):
            t = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            out.append(time.perf_counter() - t)
    return out


async def grpclib_connect(port: int, tls: ClientTls | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        ch = Channel("127.0.0.1", port, ssl=tls.ssl_context() if tls else None)
        try:
            async with ch.request(CHECK, Cardinality.UNARY_UNARY, health_pb2.HealthCheckRequest,
                                  health_pb2.HealthCheckResponse, timeout=5) as stream:
                await stream.send_message(health_pb2.HealthCheckRequest(), end=True)
                await stream.recv_message()
        finally:
            ch.close()
        out.append(time.perf_counter() - t)
    return out


async def main(quick: bool) -> dict[str, object]:
    n_connect, n_calls = (40, 400) if quick else (200, 2000)
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        pki = Pki(Path(tmp))
        srv = pki.issue("inspector", ("inspector.test",), ("127.0.0.1",))
        agent = pki.issue("compute-1", ("compute-1",))
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        ports = {"plaintext": server.add_insecure_port("127.0.0.1:0")}
        for name, mode in (("tls", "none"), ("mtls", "all")):
            cfg = TlsConfig(srv.cert, srv.key, pki.ca_file if mode == "all" else None, None, mode)
            (address, creds), = server_listeners(cfg, ("127.0.0.1:0",))[0]
            assert creds is not None
            ports[name] = server.add_secure_port(address, creds)
        await server.start()
        try:
            clients = {"plaintext": None, "tls": ClientTls(pki.ca_file),
                       "mtls": ClientTls(pki.ca_file, agent.cert, agent.key)}
            result: dict[str, object] = {}
            for name, tls in clients.items():
                target = f"127.0.0.1:{ports[name]}"
                result[f"grpcio_connect_{name}_ms"] = ms(await grpcio_connect(target, tls, n_connect))
                result[f"grpclib_connect_{name}_ms"] = ms(await grpclib_connect(ports[name], tls, n_connect))
                result[f"grpcio_call_{name}_ms"] = ms(await grpcio_calls(target, tls, n_calls))
        finally:
            await server.stop(0)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    res = asyncio.run(main(args.quick))
    for key, (median, p99) in res.items():  # type: ignore[misc]
        print(f"{key:32s} median {median:7.3f}  p99 {p99:7.3f}")
    print(json.dumps(res))

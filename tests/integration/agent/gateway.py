"""A minimal AgentGateway in its own process, so a test can freeze it (SIGSTOP) like a hung inspector.

    python -m tests.integration.agent.gateway --listen unix:/path/gw.sock [--redirect-to ENDPOINT]

Prints ``listening`` once serving, then one line per message it receives
(``hello <host>``, ``events <seq> ...``, ``heartbeat``, ``goodbye <reason>``);
acks every batch of events. With ``--redirect-to`` it answers every Hello as
a follower does: a Redirect, then the end of the stream.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc

from doctor_common.api import agent_pb2, agent_pb2_grpc
from doctor_common.grpcutil import server_options


class Gateway(agent_pb2_grpc.AgentGatewayServicer):
    def __init__(self, redirect_to: str | None) -> None:
        self.redirect_to = redirect_to

    async def Connect(self, request_iterator: AsyncIterator[agent_pb2.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[agent_pb2.GatewayMessage]:
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "hello":
                print("hello", msg.hello.host_id, flush=True)
                if self.redirect_to:
                    yield agent_pb2.GatewayMessage(redirect=agent_pb2.Redirect(leader_endpoint=self.redirect_to))
                    return
                yield agent_pb2.GatewayMessage(config=agent_pb2.ConfigHint(heartbeat_interval_ms=100))
            elif kind == "events":
                print("events", *(e.sequence for e in msg.events.events), flush=True)
                yield agent_pb2.GatewayMessage(ack=agent_pb2.Ack(sequence=msg.events.events[-1].sequence))
            elif kind == "goodbye":
                print("goodbye", msg.goodbye.reason, flush=True)
            else:
                print(kind, flush=True)


async def serve(listen: str, redirect_to: str | None, keepalive_ms: int) -> None:
    server = grpc.aio.server(options=server_options(keepalive_ms=keepalive_ms))
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(Gateway(redirect_to), server)
    server.add_insecure_port(listen)
    await server.start()
    print("listening", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", required=True, help="a gRPC address: unix:/path or 127.0.0.1:port")
    p.add_argument("--redirect-to", help="act as a follower: redirect every agent to this endpoint")
    p.add_argument("--keepalive-ms", type=int, default=1000, help="how often it pings its agents")
    args = p.parse_args()
    asyncio.run(serve(args.listen, args.redirect_to, args.keepalive_ms))

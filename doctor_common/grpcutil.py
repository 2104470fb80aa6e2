"""gRPC settings every doctor server and client shares (see notes/limits.md for why each one)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any
from collections.abc import Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_USER_TIMEOUT_MS = 20_000  # gRPC's own default TCP_USER_TIMEOUT for a server's connections


def user_timeout_ms(keepalive_ms: int, ping_timeout_ms: int) -> int:
    """The kernel's TCP_USER_TIMEOUT for a server whose keepalive pings every ``keepalive_ms`` and gives up after
    ``ping_timeout_ms``: the keepalive ends a silent peer's connection first, and its closed socket is left to be
    looked at (inspector/southbound/tcp_peer.py) for as long again at least."""
    return max(SERVER_USER_TIMEOUT_MS, 2 * (keepalive_ms + ping_timeout_ms))


def server_options(keepalive_ms: int = 1000, ping_timeout_ms: int = 1000) -> list[tuple[str, int]]:
    return [
        # the server's own keepalive is what ends a hung or cut-off peer's transport: its ping unanswered for
        # ping_timeout_ms
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.http2.ping_timeout_ms", ping_timeout_ms),
        # not the ping's timeout (grpcio 1.85): the socket's TCP_USER_TIMEOUT. Equal to the ping timeout, the kernel
        # destroyed a silent peer's connection itself whenever something sent before the ping had gone unacknowledged
        # that long first: no socket left to look at, and the silence was judged an agent's death
        ("grpc.keepalive_timeout_ms", user_timeout_ms(keepalive_ms, ping_timeout_ms)),
        # accept the clients' pings, or they are killed for "too many pings"
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging a stream that carries no data (rare heartbeats)
        ("grpc.http2.min_recv_ping_interval_without_data_ms", min(keepalive_ms, 100)),
        ("grpc.http2.max_ping_strikes", 0),
        # a reconnect storm after failover must not be cancelled at random
        ("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 40000),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # no bandwidth probes: what a server receives is small (heartbeats, events, requests), and a probe would
        # answer every agent's heartbeat with a PING it must parse and acknowledge (docs/agent.md, Footprint)
        ("grpc.http2.bdp_probe", 0),
    ]


class _StopCancellations(logging.Filter):
    """grpc.aio logs an ERROR with a traceback for each call still open when its server stops: the task that
    awaits the call's close is cancelled, and "Exception not handled by _handle_exceptions" is the CancelledError.
    An inspector holding 10,000 agent streams logged about a hundred on a clean stop. Not errors: dropped; every
    other record of that logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, asyncio.CancelledError)
                    and str(record.msg).startswith("Exception not handled by _handle_exceptions"))


def quiet_stop_cancellations() -> None:
    """Install ``_StopCancellations`` on grpc.aio's server logger, once per process: when a server stops (before
    that, a cancelled handler is logged as grpc.aio logs it)."""
    logger = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _StopCancellations) for f in logger.filters):
        logger.addFilter(_StopCancellations())


def channel_options(keepalive_ms: int = 1000, ping_timeout_ms: int = 500) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", ping_timeout_ms),
        ("grpc.http2.ping_timeout_ms", ping_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


async def add_health_and_reflection(
    server: grpc.aio.Server, service_names: Iterable[str]
) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 (every service SERVING) and server reflection, v1 and v1alpha."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = list(service_names)
    for name in [*names, ""]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    add_reflection(server, [*names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1])
    return servicer


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: grpc.aio.Server, names: list[str]) -> None:
    """grpcio-reflection serves only ``grpc.reflection.v1alpha``; clients that ask ``v1`` only (newer grpcurl,
    Postman, grpcui) get UNIMPLEMENTED. v1's messages are v1alpha's field for field
    (grpc/reflection/v1/reflection.proto), so the same servicer answers both."""
    servicer = reflection_aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1,
                                                                         {"ServerReflectionInfo": v1}),))


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


OWN_SERVICES = "/doctor.v1."


class Undecodable:
    """A stream message that could not be decoded, handed to the handler in its place: it answers
    INVALID_ARGUMENT naming ``error`` (gRPC would end the call with UNKNOWN)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(deserialize: Any, method: str) -> Any:
    def decode(raw: bytes) -> object:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's malformed input
            return Undecodable(f"cannot decode a message of {method}: {exc}")
    return decode


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    """Answer undecodable requests with INVALID_ARGUMENT naming the message, not gRPC's UNKNOWN.

    The handler is rebuilt to receive raw bytes and decode them itself, where
    a context is at hand to abort with a useful status.
    """

    def __init__(self) -> None:
        # one wrapped handler per method, built once: not a set of closures per call (10,000 idle subscribers
        # would each keep theirs)
        self._wrapped: dict[tuple[str, int], Any] = {}

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        key = (handler_call_details.method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[key] = (handler, self._wrap(handler, handler_call_details.method))
        return wrapped[1]

    @staticmethod
    def _wrap(handler, method: str):  # type: ignore[no-untyped-def]
        deserialize = handler.request_deserializer

        async def decode(raw: bytes, context: grpc.aio.ServicerContext) -> object:
            try:
                return deserialize(raw)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's malformed input
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"cannot decode the request of {method}: {exc}")

        serializer = handler.response_serializer
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(raw, context):  # type: ignore[no-untyped-def]
                return await inner_uu(await decode(raw, context), context)
            return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)
        if handler.unary_stream:
            inner_us = handler.unary_stream
            # mirror the handler's kind: gRPC treats generators and context.write() coroutines differently
            if inspect.isasyncgenfunction(inner_us):
                async def unary_stream(raw, context):  # type: ignore[no-untyped-def]
                    async for item in inner_us(await decode(raw, context), context):
                        yield item
            else:
                async def unary_stream(raw, context):  # type: ignore[no-untyped-def]
                    await inner_us(await decode(raw, context), context)
            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serializer)
        inner = handler.stream_stream or handler.stream_unary
        if handler.stream_stream and method.startswith(OWN_SERVICES):
            # our own streams check each message (``Undecodable``): no generator hop per message
            return grpc.stream_stream_rpc_method_handler(inner, request_deserializer=tolerant(deserialize, method),
                                                         response_serializer=serializer)

        async def decoded(requests, context):  # type: ignore[no-untyped-def]
            async for raw in requests:
                yield await decode(raw, context)
        if handler.stream_stream:
            if inspect.isasyncgenfunction(inner):
                async def stream_stream(requests, context):  # type: ignore[no-untyped-def]
                    async for item in inner(decoded(requests, context), context):
                        yield item
            else:
                async def stream_stream(requests, context):  # type: ignore[no-untyped-def]
                    await inner(decoded(requests, context), context)
            return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serializer)

        async def stream_unary(requests, context):  # type: ignore[no-untyped-def]
            return await inner(decoded(requests, context), context)
        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serializer)

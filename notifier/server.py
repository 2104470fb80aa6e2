"""FaultManagement: the consumers' northbound (seeds 5.5), over the registry and the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from doctor_common.api import common_pb2, fault_pb2, fault_pb2_grpc
from doctor_common.admission import UNBOUNDED, Admission, Ticket
from doctor_common.audit import Audit
from doctor_common.auth import Principal, TokenAuth
from doctor_common.shielded import start_shielded
from doctor_common.timeline import Stage, now_ns, stamp
from notifier.filters import Filter, FilterError, view_notification, view_resources
from notifier.log import CursorExpired, MemoryLog, NotificationLog
from notifier.registry import FELL_BEHIND, NOT_LEADER, REVOKED, UNSERVED, Registry, Subscriber
from notifier.subscriptions import SubscriptionBook
from notifier.wire import MAX_BATCH_BYTES, Delivery, batch, batch_length, delivery, encode

log = logging.getLogger("doctor.notifier")


class FaultState(Protocol):
    """What the notifier needs to know of the world; the inspector provides it."""

    async def visible_resources(self, principal: Principal) -> tuple[list[common_pb2.VirtualResourceInfo],
                                                             list[common_pb2.PhysicalResourceInfo]]:
        """Every resource the principal may see, with its current state and active faults."""
        ...

    def active(self) -> tuple[list[common_pb2.VirtualResourceInfo], list[common_pb2.PhysicalResourceInfo]]:
        """Resources with active alarms."""
        ...

    async def owner_of(self, resource_id: str) -> str | None:
        """Project owning a virtual resource; None when it does not exist."""
        ...

    async def server_host_status(self, server_id: str) -> tuple[str, int] | None: ...


class Publisher:
    """Append to the log, then offer to live subscribers; the log is written first so a resume finds it.

    One publication at a time, so live subscribers receive entries in sequence
    order. The append is shielded from the caller's cancellation (a leader
    losing its term): a write already sent is seen through to its answer —
    applied, or refused by the fencing token — instead of being abandoned with
    an unknown outcome. An append that raised (etcd past its deadline) or
    whose caller left may still have been applied: what it wrote is read back
    from the log and offered live, in order, before anything newer
    (``catch_up``), so a retry can ask the journal instead of announcing twice.
    """

    def __init__(self, log_: NotificationLog, registry: Registry,
                 after_append: Callable[[int, int], None] | None = None) -> None:
        self.log = log_
        self.registry = registry
        # a test hook (inspector/response/crashpoint.py): (sequence, stage) once appended, before the fan-out
        self.after_append = after_append or (lambda _seq, _stage: None)
        self._shield = not isinstance(log_, MemoryLog)  # an in-memory append cannot be left half-done
        self._lock = asyncio.Lock()
        self.audit = Audit()  # the daemon sets its own
        # an append raised or was left by its caller after this sequence: what it wrote is not offered yet
        self._unsure_after: int | None = None
        self._inflight: asyncio.Future[int] | None = None  # that append, if it may still be running

    async def publish(self, notification: fault_pb2.FaultNotification, also: Sequence[Any] = (),
                      stage: int = Stage.STAGE_PUBLISHED) -> int:
        """Log, then fan out; ``stage`` is stamped on its timeline (an incident's earlier notices have their own)."""
        stamp(notification.timeline, stage)
        async with self._lock:
            await self._catch_up()  # anything an earlier append wrote goes out before this one
            before = self.log.last_sequence
            try:
                if self._shield:
                    self._inflight = start_shielded(self._append(notification, also))  # errors logged in _append
                    seq = await asyncio.shield(self._inflight)
                else:
                    seq = await self._append(notification, also)
            except BaseException:
                self._unsure_after = before  # applied or not: the log will say
                raise
            self._inflight = None
            self.after_append(seq, stage)
            self._offer(notification)
        return seq

    async def catch_up(self) -> None:
        """Offer live what appends that raised may have written after all (read back from the log). Raises
        when the log cannot be read: the caller tries again later."""
        async with self._lock:
            await self._catch_up()

    async def _catch_up(self) -> None:
        if self._unsure_after is None:
            return
        if self._inflight is not None:  # its caller left; the write goes on: its outcome first
            await asyncio.gather(asyncio.shield(self._inflight), return_exceptions=True)
            self._inflight = None
        last = await self.log.load()
        after = max(self._unsure_after, self.registry.last_sequence)  # what was offered already is not read
        if last > after:
            try:
                entries = await self.log.read(after, last)
            except CursorExpired:
                entries = []  # trimmed already: every stream that missed it resumes into CursorExpired
            if entries:
                log.warning("%d notification(s) whose append raised were written after all: offered now",
                            len(entries))
            for n in entries:
                self._offer(n)
        self._unsure_after = None

    def _offer(self, notification: fault_pb2.FaultNotification) -> None:
        recipients = self.registry.fan_out(notification)
        self.audit.published(notification.sequence, notification.notification_id, recipients,
                             fault_pb2.IncidentPhase.Name(notification.phase).removeprefix("INCIDENT_PHASE_").lower())

    async def _append(self, notification: fault_pb2.FaultNotification, also: Sequence[Any]) -> int:
        try:
            return await self.log.append(notification, also=also) if also else await self.log.append(notification)
        except Exception as exc:
            log.warning("notification %s not appended: %s: %s", notification.notification_id, type(exc).__name__, exc)
            raise


CATCH_UP_S = 1.0  # a replica following the log waits this long for an entry a consumer already saw elsewhere
SNAPSHOT_PART_BYTES = 1 << 20  # well under gRPC's 4 MiB default receive limit, whatever the fleet's size


def snapshot_parts(sub_id: str, last_sequence: int, virtual: Sequence[common_pb2.VirtualResourceInfo],
                   physical: Sequence[common_pb2.PhysicalResourceInfo],
                   limit: int = SNAPSHOT_PART_BYTES) -> list[fault_pb2.SubscribeResponse]:
    """The snapshot as SubscribeResponses of about ``limit`` bytes at most (one resource larger than that goes
    alone), each naming the subscription and the log position; every one but the last has ``more`` set."""
    def empty() -> fault_pb2.SubscribeResponse:
        return fault_pb2.SubscribeResponse(subscription_id=sub_id, last_sequence=last_sequence)

    parts: list[fault_pb2.SubscribeResponse] = []
    current, size, count = empty(), 64, 0
    for field, items in (("virtual_resource_info", virtual), ("physical_resource_info", physical)):
        for item in items:
            n = item.ByteSize() + 8  # with its tag and length
            if count and size + n > limit:
                parts.append(current)
                current, size, count = empty(), 64, 0
            getattr(current, field).append(item)
            size, count = size + n, count + 1
    parts.append(current)
    for part in parts[:-1]:
        part.more = True
    return parts


async def _always(_context: grpc.aio.ServicerContext, key: str = "") -> None:
    return None


class FaultManagementServicer(fault_pb2_grpc.FaultManagementServicer):
    def __init__(self, auth: TokenAuth, state: FaultState, log_: NotificationLog, registry: Registry,
                 book: SubscriptionBook | None = None,
                 gate: Callable[..., Awaitable[None]] = _always, admission: Admission = UNBOUNDED,
                 position: Callable[[], int] | None = None, following: Callable[[], bool] = lambda: False,
                 ended: Callable[[], None] = lambda: None) -> None:
        self.auth = auth
        self.admission = admission  # subscriptions set up at once (snapshot and replay: doctor_common/admission)
        self.state = state
        self.log = log_
        self.registry = registry
        self.book = book or SubscriptionBook()
        self.gate = gate  # (context, key=""): aborts UNAVAILABLE with where to go unless this replica serves
        # the last entry live subscribers were offered: the log's end where it is written, the feed's position on
        # a replica that follows the log (``inspector/ha/replica_feed.py``), which may be a moment behind
        self.position = position or (lambda: self.log.last_sequence)
        self.following = following
        self.ended = ended  # a Subscribe call ended (doctor_common/heap_trim.py gives its memory back)

    async def _filter(self, principal: Principal, f: fault_pb2.SubscribeFilter | fault_pb2.FaultQueryFilter,
                      context: grpc.aio.ServicerContext) -> Filter:
        try:
            flt = Filter.from_proto(f)
        except FilterError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not principal.admin:
            for rid in sorted(flt.resource_ids):
                owner = await self.state.owner_of(rid)
                if owner is None:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"virtual resource {rid!r} does not exist")
                if owner != principal.project:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                        f"virtual resource {rid!r} belongs to another project")
        return flt

    async def Subscribe(self, request: fault_pb2.SubscribeRequest, context: grpc.aio.ServicerContext) -> None:
        principal = await self.auth.consumer(context)
        await self.gate(context, request.subscription_id)  # a resuming subscription may be held a moment
        if not self.admission.enter():
            await self.admission.refuse(context, "subscription")
        ticket = self.admission.ticket()
        try:
            await self._subscribe(request, context, principal, ticket)
        finally:
            ticket.done()
            self.ended()

    async def _subscribe(self, request: fault_pb2.SubscribeRequest, context: grpc.aio.ServicerContext,
                         principal: Principal, ticket: Ticket) -> None:
        flt = await self._filter(principal, request.filter, context)
        resume = request.resume_after
        if resume > self.position() and not (self.following() and await self.registry.reached(resume, CATCH_UP_S)):
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"resume_after={resume} is beyond the last sequence {self.position()}")
        known = self.book.resumable(request.subscription_id, principal) if request.subscription_id else None
        # register before reading the log: nothing published from here on can fall between the two
        sub = self.registry.add(principal, flt, self.position(), known.id if known else "", request.max_batch)
        sub.credential = self.auth.credential(context)
        # a recognised subscription resumes even from 0 (its snapshot was taken before anything was logged);
        # resume_after=0 on a new one means "from now on"
        replay = bool(resume or known)
        sub.last_delivered = resume if replay else sub.start_sequence  # where to resume if cut off before any delivery
        log.info("subscription %s for %s (resume_after=%d%s)", sub.id, principal.name, resume,
                 ", resumed" if known else "")
        sub.task = asyncio.current_task()
        try:
            try:
                await self.book.attach(sub, request.filter.SerializeToString(deterministic=True))
            except Exception as exc:  # noqa: BLE001 - not leading any more, or etcd refused: the client retries
                self.registry.remove(sub)
                await self.gate(context)
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot record the subscription: {exc}")
            virtual, physical = await self.state.visible_resources(principal)
            virtual, physical = view_resources(principal, flt, virtual, physical, require_faults=False)
            parts = snapshot_parts(sub.id, sub.start_sequence, virtual, physical)
            del virtual, physical  # not kept alive by this frame for the stream's lifetime
            while parts:
                await self._write(context, sub, fault_pb2.SubscribeStreamMessage(subscribed=parts.pop(0)))
            if replay:
                try:
                    missed = await self.log.read(resume, sub.start_sequence)
                except CursorExpired as exc:
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE, str(exc))
                views = [delivery(v) for v in (view_notification(principal, flt, n) for n in missed) if v is not None]
                del missed
                i = 0
                while i < len(views):
                    k = batch_length(views, i, sub.max_batch)
                    await self._deliver(context, sub, views[i:i + k])
                    i += k
                del views
            ticket.done()  # set up: the next subscription may be admitted
            while True:
                item = await sub.next()
                if item is None:
                    await self._cut_off(context, sub)
                assert item is not None
                if sub.max_batch > 1:  # what else is queued goes with it, in one message
                    more = sub.take_queued(sub.max_batch - 1, MAX_BATCH_BYTES - len(item.data))
                    if more:
                        await self._deliver(context, sub, [item, *more])
                        continue
                await self._deliver(context, sub, [item])
        finally:
            sub.task = None
            self.registry.remove(sub)
            self.book.detach(sub)
            log.info("subscription %s ended", sub.id)

    async def _deliver(self, context: grpc.aio.ServicerContext, sub: Subscriber, items: Sequence[Delivery]) -> None:
        """One stream message: the delivery alone, or a batch of several."""
        await self._write(context, sub, items[0].data if len(items) == 1 else batch(items), items[-1].sequence)
        sub.delivered += len(items)

    async def _write(self, context: grpc.aio.ServicerContext, sub: Subscriber,
                     msg: bytes | fault_pb2.SubscribeStreamMessage, through: int = 0) -> None:
        """Write (bytes as they are); ``through``: the last notice it carries. A client that stops reading blocks
        the write; the subscriber's ``end`` (its queue overflowed, the replica stopped leading, a newer stream took
        it over) interrupts it."""
        if sub.ended_by:  # ended while this handler awaited something else (the book, the state, the log)
            self.registry.remove(sub)
            await self._cut_off(context, sub)  # the cursor it names stays at what was sent
        if through:
            # counted before the write: a write interrupted by a cut-off is already in the transport and reaches
            # the client ahead of the status, so the cursor the status names includes it
            sub.last_delivered = through
        sub.writing = True
        try:
            await context.write(msg)
        except asyncio.CancelledError:
            if not sub.ended_by:
                raise  # the call itself was cancelled (the client left, the server stops)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            # HTTP/2 sends the status after the data already in flight, so the client learns where to resume as
            # soon as it reads again (or the connection is declared dead)
            self.registry.remove(sub)
            await self._cut_off(context, sub)
        finally:
            sub.writing = False

    @staticmethod
    async def _cut_off(context: grpc.aio.ServicerContext, sub: Subscriber) -> None:
        if sub.ended_by == NOT_LEADER:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"this replica stopped leading; subscribe again with resume_after={sub.last_delivered} "
                                "at the leader", trailing_metadata=(("doctor-leader", sub.leader_hint),))
        if sub.ended_by == UNSERVED:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"this replica lost sight of the notification log (etcd); subscribe again with "
                                f"resume_after={sub.last_delivered} at another replica",
                                trailing_metadata=(("doctor-leader", sub.leader_hint),))
        if sub.ended_by == REVOKED:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "the credentials this subscription was opened with are no longer valid (the "
                                "inspector's configuration was reloaded without them, or Keystone revoked the token "
                                "or changed its roles): subscribe again with valid credentials")
        if sub.ended_by and sub.ended_by != FELL_BEHIND:
            await context.abort(grpc.StatusCode.ABORTED, f"subscription {sub.id} was resumed by a newer stream")
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"consumer too slow: more than {sub.limit} notifications queued; "
                            f"subscribe again with resume_after={sub.last_delivered}")

    async def QueryFaults(self, request: fault_pb2.FaultQueryRequest,
                          context: grpc.aio.ServicerContext) -> fault_pb2.FaultQueryResponse:
        principal = await self.auth.consumer(context)
        await self.gate(context)
        flt = await self._filter(principal, request.filter, context)
        virtual, physical = self.state.active()
        virtual, physical = view_resources(principal, flt, virtual, physical)
        return fault_pb2.FaultQueryResponse(virtual_resource_info=virtual, physical_resource_info=physical)

    async def GetServerHostStatus(self, request: fault_pb2.ServerHostStatusRequest,
                                  context: grpc.aio.ServicerContext) -> fault_pb2.ServerHostStatusResponse:
        principal = await self.auth.consumer(context)
        await self.gate(context)
        if not request.server_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "server_id is required")
        owner = await self.state.owner_of(request.server_id)
        if owner is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"server {request.server_id!r} does not exist")
        if not principal.owns(owner):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"server {request.server_id!r} belongs to another project")
        result = await self.state.server_host_status(request.server_id)
        if result is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"server {request.server_id!r} does not exist")
        host, status = result  # type: ignore[misc]
        return fault_pb2.ServerHostStatusResponse(server_id=request.server_id, host=host, host_status=status)


def stamp_delivered(n: fault_pb2.FaultNotification) -> None:
    """Consumers call this on receipt to close the timeline."""
    stamp(n.timeline, Stage.STAGE_DELIVERED, now_ns())


def add_fault_management(servicer: FaultManagementServicer, server: grpc.aio.Server) -> None:
    """``fault_pb2_grpc.add_FaultManagementServicer_to_server``, but Subscribe's responses may be bytes already
    serialized (``wire.Delivery``): one serialization per view, not one per subscriber."""
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=fault_pb2.SubscribeRequest.FromString,
            response_serializer=encode),
        "QueryFaults": grpc.unary_unary_rpc_method_handler(
            servicer.QueryFaults, request_deserializer=fault_pb2.FaultQueryRequest.FromString,
            response_serializer=fault_pb2.FaultQueryResponse.SerializeToString),
        "GetServerHostStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetServerHostStatus, request_deserializer=fault_pb2.ServerHostStatusRequest.FromString,
            response_serializer=fault_pb2.ServerHostStatusResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("doctor.v1.FaultManagement", handlers),))
    server.add_registered_method_handlers("doctor.v1.FaultManagement", handlers)


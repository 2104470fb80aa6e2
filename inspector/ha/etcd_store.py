"""The leader's state in etcd: every write fenced by the leadership token.

Every write here is one etcd transaction nested in
``create_revision(<prefix>/leader) == token`` (``Guard.txn``), so a deposed
leader's write fails with ``NotLeader`` — whatever that process believes.
Transient failures (etcd raft election, a killed member, a deadline) are
retried until ``write_deadline_s``; each write is idempotent, so a retry of a
write that was in fact applied is harmless.

Keys under the cluster prefix ``P``::

    P/state/<key>                    generic leader state (put / delete / get_prefix)
    P/alarms/<id>, P/subscriptions/<id>, ...   collections of blobs (``Collection``)
    P/recovery/<incident>/incident   what the incident is about (JSON)
    P/recovery/<incident>/step/<s>   one record per completed recovery step (JSON)

The recovery journal lets a new leader finish what a dead one began: the
steps of ``RECOVERY_STEPS`` are idempotent actions; each is recorded once
(create-if-absent), and ``pending_steps`` says what is left.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

import aetcd
from aetcd.utils import prefix_range_end
from google.protobuf.message import Message

from doctor_common.etcd_guard import TRANSIENT, EtcdUnavailable, Guard

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Step(StrEnum):
    NOTIFY_SUSPECTED = "notify_suspected"   # owners told of the suspicion
    FENCE = "fence"
    CONFIRM_OFF = "confirm_off"
    NOTIFY_FENCED = "notify_fenced"         # owners told of the confirmed power-off
    MARK_DOWN = "mark_down"
    SERVERS_ERROR = "servers_error"
    NOTIFY = "notify"


RECOVERY_STEPS: tuple[Step, ...] = tuple(Step)
RESERVED = frozenset({"leader", "state", "recovery", "log", "controller"})  # key spaces under the prefix used elsewhere


@dataclass(frozen=True)
class StepRecord:
    step: str
    token: int              # fencing token of the leader that recorded it
    node_id: str
    time_unix: float
    detail: dict[str, Any] = field(default_factory=dict)
    revision: int = 0       # etcd revision of the record: the order steps were recorded in


@dataclass(frozen=True)
class Incident:
    incident_id: str
    data: dict[str, Any]
    steps: tuple[StepRecord, ...]

    def pending(self, plan: Sequence[str] = RECOVERY_STEPS) -> list[str]:
        done = {s.step for s in self.steps}
        return [s for s in plan if s not in done]


def _check_name(kind: str, name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"{kind} must be non-empty and contain no '/': {name!r}")
    return name


class EtcdStore:
    def __init__(self, client: aetcd.Client, prefix: str, guard: Guard, *, node_id: str = "",
                 write_deadline_s: float = 6.0) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.guard = guard
        self.node_id = node_id
        self.write_deadline_s = write_deadline_s

    def key(self, *parts: str) -> bytes:
        return "/".join((self.prefix, *parts)).encode()

    # -- fenced transactions --------------------------------------------------
    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
        """``Guard.txn`` retried on transient failures until the write deadline (NotLeader is final)."""
        deadline = time.monotonic() + self.write_deadline_s
        delay = 0.02
        while True:
            try:
                return await self.guard.txn(compare, success, failure)
            except EtcdUnavailable:
                if time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _read(self, key: bytes, *, prefix: bool) -> Any:
        try:
            return await (self.client.get_prefix(key) if prefix else self.client.get(key))
        except TRANSIENT as exc:
            raise EtcdUnavailable(f"cannot read {key!r}: {exc}") from exc

    # -- generic state --------------------------------------------------------
    async def put(self, key: str, value: bytes) -> None:
        t = self.client.transactions
        await self.txn([], [t.put(self.key("state", key), value)])

    async def delete(self, key: str) -> None:
        t = self.client.transactions
        await self.txn([], [t.delete(self.key("state", key))])

    async def get(self, key: str) -> bytes | None:
        kv = await self._read(self.key("state", key), prefix=False)
        return kv.value if kv is not None else None

    async def get_prefix(self, prefix: str = "") -> dict[str, bytes]:
        """State keys starting with ``prefix`` (relative to ``P/state/``) → values."""
        base = self.key("state", "")
        r = await self._read(base + prefix.encode(), prefix=True)
        return {kv.key[len(base):].decode(): kv.value for kv in r}

    def collection(self, name: str, encode: Callable[[T], bytes], decode: Callable[[bytes], T]) -> "Collection[T]":
        if name in RESERVED:
            raise ValueError(f"collection name {name!r} is reserved ({', '.join(sorted(RESERVED))})")
        return Collection(self, _check_name("collection", name), encode, decode)

    # -- recovery journal -----------------------------------------------------
    async def open_incident(self, incident_id: str, data: dict[str, Any], also: Sequence[Any] = ()) -> bool:
        """Record what the incident is about; False when it was already open (data kept).

        ``also``: more operations (e.g. a collection's ``put_op``) applied in the same transaction.
        """
        k = self.key("recovery", _check_name("incident id", incident_id), "incident")
        t = self.client.transactions
        ok, _ = await self.txn([t.create(k) == 0], [t.put(k, json.dumps(data, sort_keys=True).encode()), *also])
        return ok

    def _step_key_value(self, incident_id: str, step: str, detail: dict[str, Any] | None) -> tuple[bytes, bytes]:
        k = self.key("recovery", _check_name("incident id", incident_id), "step", _check_name("step", str(step)))
        token = getattr(self.guard, "token", None)
        rec = {"step": str(step), "node_id": self.node_id, "time_unix": time.time(), "detail": detail or {},
               "token": token or 0}
        return k, json.dumps(rec).encode()

    async def record_step(self, incident_id: str, step: str, detail: dict[str, Any] | None = None) -> bool:
        """Record that ``step`` of the incident is done: True if this call recorded it, False if it already was.

        A retried write that had in fact been applied also answers False: either
        way the step is recorded exactly once.
        """
        k, v = self._step_key_value(incident_id, step, detail)
        t = self.client.transactions
        ok, _ = await self.txn([t.create(k) == 0], [t.put(k, v)])
        return ok

    def step_op(self, incident_id: str, step: str, detail: dict[str, Any] | None = None) -> Any:
        """The put of a step record, to apply inside another fenced transaction (e.g. the log append that
        *is* the step): the step is then recorded if and only if that transaction is applied."""
        k, v = self._step_key_value(incident_id, step, detail)
        return self.client.transactions.put(k, v)

    async def steps(self, incident_id: str) -> list[StepRecord]:
        """The incident's recorded steps in the order they were recorded."""
        r = await self._read(self.key("recovery", _check_name("incident id", incident_id), "step", ""), prefix=True)
        return sorted((_step(kv) for kv in r), key=lambda s: s.revision)

    async def pending_steps(self, incident_id: str, plan: Sequence[str] = RECOVERY_STEPS) -> list[str]:
        done = {s.step for s in await self.steps(incident_id)}
        return [s for s in plan if s not in done]

    async def incidents(self) -> dict[str, Incident]:
        """Every open incident with its recorded steps: what a new leader must finish."""
        base = self.key("recovery", "")
        r = await self._read(base, prefix=True)
        data: dict[str, dict[str, Any]] = {}
        steps: dict[str, list[StepRecord]] = {}
        for kv in r:
            iid, _, rest = kv.key[len(base):].decode().partition("/")
            if rest == "incident":
                data[iid] = json.loads(kv.value)
            elif rest.startswith("step/"):
                steps.setdefault(iid, []).append(_step(kv))
        return {i: Incident(i, data.get(i, {}), tuple(sorted(steps.get(i, []), key=lambda s: s.revision)))
                for i in sorted(set(data) | set(steps))}

    async def close_incident(self, incident_id: str) -> None:
        """The recovery is complete: forget its journal."""
        k = self.key("recovery", _check_name("incident id", incident_id), "")
        t = self.client.transactions
        await self.txn([], [t.delete(k, range_end=prefix_range_end(k))])


def _step(kv: Any) -> StepRecord:
    v = json.loads(kv.value)
    return StepRecord(step=v["step"], token=int(v.get("token", 0)), node_id=v.get("node_id", ""),
                      time_unix=float(v.get("time_unix", 0)), detail=v.get("detail", {}),
                      revision=kv.mod_revision)


class Collection(Generic[T]):
    """Keyed blobs under ``P/<name>/`` (active alarms, subscriptions), fenced like every write."""

    def __init__(self, store: EtcdStore, name: str, encode: Callable[[T], bytes],
                 decode: Callable[[bytes], T]) -> None:
        self.store, self.name, self.encode, self.decode = store, name, encode, decode

    def _key(self, item_id: str) -> bytes:
        return self.store.key(self.name, _check_name("id", item_id))

    async def put(self, item_id: str, item: T) -> None:
        await self.store.txn([], [self.put_op(item_id, item)])

    def put_op(self, item_id: str, item: T) -> Any:
        """The put as an operation for another fenced transaction."""
        return self.store.client.transactions.put(self._key(item_id), self.encode(item))

    def delete_op(self, item_id: str) -> Any:
        return self.store.client.transactions.delete(self._key(item_id))

    async def delete(self, item_id: str) -> None:
        t = self.store.client.transactions
        await self.store.txn([], [t.delete(self._key(item_id))])

    async def get(self, item_id: str) -> T | None:
        kv = await self.store._read(self._key(item_id), prefix=False)
        return self.decode(kv.value) if kv is not None else None

    async def items(self) -> dict[str, T]:
        base = self.store.key(self.name, "")
        r = await self.store._read(base, prefix=True)
        return {kv.key[len(base):].decode(): self.decode(kv.value) for kv in r}


def json_codec() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    return (lambda v: json.dumps(v, sort_keys=True).encode()), json.loads


def proto_codec(message_type: type[M]) -> tuple[Callable[[M], bytes], Callable[[bytes], M]]:
    return (lambda m: m.SerializeToString()), message_type.FromString

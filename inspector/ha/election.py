"""Inspector leadership through etcd (DESIGN principle 3: only the leader acts, and it can prove it).

The pattern of ``aetcd/locks.py``: a lease, a create-if-absent transaction on
``<prefix>/leader`` whose value names the candidate (node id, endpoint), and a
watch for the key's deletion. What aetcd lacks is written here:

* a keep-alive task and a timer that **steps the leader down** before the
  lease can expire (``inspector/ha/lease.py``);
* the fencing token: the leader key's create revision. ``Election.txn`` runs
  a transaction only if ``create_revision(<prefix>/leader) == token``
  (``doctor_common/etcd_guard.py``) — a deposed leader's writes fail with
  ``NotLeader`` whatever it believes;
* a follower loop that re-creates its watch on every round (aetcd watches die
  on connection errors and never resume) and re-reads the key at least once
  per TTL;
* resuming a term: a leader that stepped down because etcd was unreachable
  (quorum loss) and finds its key and lease still alive afterwards leads again
  with the same token instead of letting everyone campaign.

Use::

    async with Election(client, config, node_id="ctl-1", endpoint="10.0.0.1:50051") as election:
        while True:
            term = await election.wait_leader()
            await term.run(lead(term))       # cancelled when term.lost is set
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import aetcd
from aetcd import exceptions as aetcd_exc
from aetcd.rtypes import EventKind

from doctor_common.etcd_guard import TRANSIENT, EtcdUnavailable, NotLeader, decode_json, guarded_txn
from inspector.ha.etcd_config import EtcdConfig
from inspector.ha.lease import LeaseKeeper, renew, revoke_quietly
from inspector.ha.term import LeaderInfo, Term

log = logging.getLogger("doctor.inspector.election")


class Election:
    """Campaign for ``<prefix>/leader`` until closed; see the module docstring."""

    def __init__(self, client: aetcd.Client, config: EtcdConfig, *, node_id: str, endpoint: str,
                 on_change: Callable[["Term | None"], None] | None = None, agent_endpoint: str = "") -> None:
        self.client = client
        self.config = config
        self.node_id = node_id
        self.endpoint = endpoint
        self.agent_endpoint = agent_endpoint
        self.on_change = on_change
        self.leader_key = f"{config.prefix}/leader".encode()
        value: dict[str, Any] = {"node_id": node_id, "endpoint": endpoint, "pid": os.getpid()}
        if agent_endpoint:
            value["agent_endpoint"] = agent_endpoint
        self._value = json.dumps(value).encode()
        self._term: Term | None = None
        self._last_term: Term | None = None
        self._stale: Term | None = None      # a term lost for want of renewal that may still be resumed
        self._leader: LeaderInfo | None = None
        self._leading = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lease = LeaseKeeper(client)
        self._watch_rev = 0
        self._closing = False

    # -- public API ---------------------------------------------------------
    @property
    def term(self) -> Term | None:
        return self._term if self._term is not None and self._term.valid else None

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def token(self) -> int | None:
        t = self.term
        return t.token if t else None

    @property
    def lost(self) -> asyncio.Event:
        """The current term's ``lost`` event (the last term's when not leading; set if never led)."""
        t = self._term or self._last_term
        if t is None:
            ev = asyncio.Event()
            ev.set()
            return ev
        return t.lost

    def current_term(self) -> Term:
        t = self.term
        if t is None:
            raise NotLeader(f"{self.node_id} is not the leader" + (
                f" (the leader is {self._leader.node_id} at {self._leader.endpoint})" if self._leader else ""))
        return t

    def leader_info(self) -> LeaderInfo | None:
        """Who leads, as last seen (ourselves when leading); None when unknown or vacant."""
        t = self.term
        if t is not None:
            return LeaderInfo(self.node_id, self.endpoint, t.token, t.lease_id, self.agent_endpoint)
        return self._leader

    def leader_endpoint(self) -> str | None:
        """Where agents and consumers should go (a follower's Redirect)."""
        info = self.leader_info()
        return info.endpoint if info else None

    async def current_leader(self) -> LeaderInfo | None:
        """A fresh, linearizable read of the leader key (also refreshes ``leader_info()``)."""
        try:
            kv = await self.client.get(self.leader_key)
        except TRANSIENT as exc:
            raise EtcdUnavailable(f"cannot read {self.leader_key!r}: {exc}") from exc
        info = self._info(kv) if kv else None
        if self.term is None:
            self._leader = info
        return info

    async def wait_leader(self, timeout: float | None = None) -> Term:
        """Wait until this candidate leads; the term to act under."""
        async with asyncio.timeout(timeout):
            while True:
                self._raise_if_dead()
                t = self.term
                if t is not None:
                    return t
                waiter = asyncio.ensure_future(self._leading.wait())
                assert self._task is not None, "use `async with Election(...)` or start() first"
                try:
                    await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
        """A transaction fenced by the current term's token (see ``guarded_txn``)."""
        term = self.current_term()
        try:
            return await guarded_txn(self.client, self.leader_key, term.token, compare, success, failure)
        except NotLeader as exc:
            term.lose(str(exc), definitive=True)
            raise

    # -- life cycle ---------------------------------------------------------
    async def __aenter__(self) -> "Election":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"election-{self.node_id}")

    async def close(self) -> None:
        """Stop campaigning; a leader hands over at once by revoking its lease (which deletes the key)."""
        self._closing = True
        if self._term is not None:
            self._term.lose("election closed")
        # grpc.aio may turn a cancellation into an RPC error the loop retries: insist, boundedly
        for _ in range(100):
            if self._task is None or self._task.done():
                break
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=0.1)
        if self._term is not None:  # _lead's finally normally ended it already
            self._end_term(self._term, "election closed", definitive=False)
        held, self._stale = self._stale, None
        if held is not None:
            try:
                async with asyncio.timeout(self.config.call_timeout_s):  # not wait_for (gh-86296)
                    await self.client.revoke_lease(held.lease_id)
            except TRANSIENT as exc:
                log.warning("could not revoke lease %x on close (it expires in %ds): %s",
                            held.lease_id, held.granted_ttl, exc)

    def _raise_if_dead(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            exc = self._task.exception()
            raise RuntimeError(f"election loop of {self.node_id} died: {exc!r}") from exc

    # -- the loop -----------------------------------------------------------
    async def _run(self) -> None:
        backoff = _Backoff(0.05, min(1.0, self.config.lease_ttl_s / 2))
        while not self._closing:
            try:
                term = None
                if self._stale is not None:
                    term = await self._resume(self._stale)
                if term is None:
                    term = await self._campaign()
                if term is not None:
                    await self._lead(term)
                else:
                    await self._wait_vacancy()
                backoff.reset()
            except TRANSIENT as exc:
                if self._closing:
                    return
                if isinstance(exc, aetcd_exc.UnauthenticatedError) and hasattr(self.client, "reset"):
                    await self.client.reset()  # an auth token etcd forgot (expired unused): log in again
                delay = backoff.next()
                log.info("%s: etcd unavailable (%s); retrying in %.2fs", self.node_id, exc or type(exc).__name__,
                         delay)
                await asyncio.sleep(delay)

    async def _campaign(self) -> Term | None:
        kv = await self.client.get(self.leader_key)
        if kv is not None:
            self._leader = self._info(kv)
            self._watch_rev = kv.header.revision  # not mod_revision: that one may be compacted away
            return None
        sent = time.monotonic()
        lease = await self.client.lease(self.config.lease_ttl_s)
        t = self.client.transactions
        try:
            ok, resp = await self.client.transaction(
                compare=[t.create(self.leader_key) == 0],
                success=[t.put(self.leader_key, self._value, lease=lease.id)],
                failure=[t.get(self.leader_key)])
        except BaseException:
            # the put may have been applied: the key goes with the lease
            await revoke_quietly(self.client, lease.id, self.config.call_timeout_s)
            raise
        if ok:
            token = resp[0].response_put.header.revision
            return Term(token, lease.id, lease.ttl, sent + lease.ttl, self.config.step_down_margin_s)
        holder = resp[0][0][1] if resp and resp[0] else None
        if holder is not None and holder.lease == lease.id:
            # a gRPC retry applied our put twice: it is ours after all
            return Term(holder.create_revision, lease.id, lease.ttl, sent + lease.ttl, self.config.step_down_margin_s)
        await revoke_quietly(self.client, lease.id, self.config.call_timeout_s)
        if holder is not None:
            self._leader = self._info(holder)
            self._watch_rev = holder.header.revision
        return None

    async def _wait_vacancy(self) -> None:
        """Until the leader key is deleted, or one TTL passes (then the caller reads it again)."""
        try:
            ev = await self.client.watch_once(self.leader_key, timeout=max(1, self.config.lease_ttl_s),
                                              start_revision=self._watch_rev + 1, kind=EventKind.DELETE)
        except aetcd_exc.WatchTimeoutError:
            return
        if isinstance(ev, BaseException):  # aetcd hands stream errors over as the "event"
            raise ev
        self._leader = None

    async def _resume(self, stale: Term) -> Term | None:
        """After a step-down for want of renewal: lead again if our lease and key survived."""
        sent = time.monotonic()
        reply = await renew(self.client, stale.lease_id, self.config.call_timeout_s)
        if reply.TTL <= 0:
            self._stale = None
            return None
        kv = await self.client.get(self.leader_key)
        if kv is None or kv.create_revision != stale.token or kv.lease != stale.lease_id:
            self._stale = None
            await revoke_quietly(self.client, stale.lease_id, self.config.call_timeout_s)
            return None
        self._stale = None
        log.info("%s: lease %x and leader key survived; resuming with token %d", self.node_id, stale.lease_id,
                 stale.token)
        return Term(stale.token, stale.lease_id, stale.granted_ttl, sent + reply.TTL, self.config.step_down_margin_s)

    async def _lead(self, term: Term) -> None:
        self._term = term
        self._leader = LeaderInfo(self.node_id, self.endpoint, term.token, term.lease_id, self.agent_endpoint)
        self._lease.arm(term)
        log.info("%s leads with token %d (lease %x, granted TTL %ds)", self.node_id, term.token, term.lease_id,
                 term.granted_ttl)
        self._leading.set()
        self._notify(term)
        tasks = [asyncio.create_task(self._lease.keep(term)), asyncio.create_task(self._watch_own_key(term))]
        try:
            await term.lost.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._term is term:
                self._end_term(term, term.reason or "election closed", definitive=term.definitive)

    def _end_term(self, term: Term, reason: str, *, definitive: bool) -> None:
        term.lose(reason, definitive=definitive)
        self._lease.disarm()
        self._term, self._last_term = None, term
        self._leading.clear()
        self._leader = None
        if not term.definitive:
            self._stale = term
        self._notify(None)

    async def _watch_own_key(self, term: Term) -> None:
        """Lose the term at once if the leader key disappears (deleted by hand, lease revoked)."""
        while term.valid:
            try:
                kv = await self.client.get(self.leader_key)
                if kv is None or kv.create_revision != term.token:
                    term.lose("the leader key was deleted", definitive=True)
                    return
                ev = await self.client.watch_once(self.leader_key, timeout=max(1, term.granted_ttl),
                                                  start_revision=kv.header.revision + 1, kind=EventKind.DELETE)
            except aetcd_exc.WatchTimeoutError:
                continue
            except TRANSIENT:
                await asyncio.sleep(0.1)  # the keep-alive decides whether we still lead
                continue
            if isinstance(ev, BaseException):
                await asyncio.sleep(0.1)
                continue
            term.lose("the leader key was deleted", definitive=True)

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def _info(kv: Any) -> LeaderInfo:
        v = decode_json(kv.value)
        return LeaderInfo(str(v.get("node_id", "?")), str(v.get("endpoint", "")), kv.create_revision, kv.lease,
                          str(v.get("agent_endpoint", "")))

    def _notify(self, term: Term | None) -> None:
        if self.on_change is not None:
            try:
                self.on_change(term)
            except Exception:
                log.exception("election on_change callback failed")


class _Backoff:
    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.current = first, cap, first

    def reset(self) -> None:
        self.current = self.first

    def next(self) -> float:
        out = self.current
        self.current = min(self.cap, self.current * 2)
        return out

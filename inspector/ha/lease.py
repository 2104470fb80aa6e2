"""Keeping the leader's lease: renewals with their own deadlines, and the step-down timer.

aetcd has no keep-alive loop (its ``refresh_lease`` opens a stream per call
with the client's deadline), so it is written here: one renewal every
granted TTL / 4, each bounded by the moment the leader must step down; and a
timer that loses the term at ``renewed_until - step_down_margin_s``, when
the lease is certainly still ours: nobody else can lead before we stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aetcd
import grpc
from aetcd import exceptions as aetcd_exc
from aetcd import rpc

from doctor_common.etcd_guard import TRANSIENT
from inspector.ha.term import Term

log = logging.getLogger("doctor.inspector.election")


async def renew(client: aetcd.Client, lease_id: int, timeout: float) -> Any:
    """One LeaseKeepAlive round trip with its own deadline (aetcd's refresh_lease uses the client's)."""
    await client.connect()
    call = client.leasestub.LeaseKeepAlive(timeout=timeout, metadata=client.metadata)
    try:
        await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
        await call.done_writing()  # half-close: etcd ends the stream after its reply
        reply = await call.read()
    finally:
        if not call.done():
            call.cancel()
    if reply is None or reply is grpc.aio.EOF:
        raise aetcd_exc.ConnectionFailedError("keep-alive stream ended without a reply")
    return reply


async def revoke_quietly(client: aetcd.Client, lease_id: int, timeout: float) -> None:
    """Revoke a lease we no longer want; if etcd does not answer, it expires by itself."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation on 3.11 (gh-86296)
            await client.revoke_lease(lease_id)
    except TRANSIENT as exc:
        log.debug("revoking lease %x: %s (it expires by itself)", lease_id, exc)


class LeaseKeeper:
    """Renews one term's lease at a time and steps it down before the lease can expire."""

    def __init__(self, client: aetcd.Client) -> None:
        self.client = client
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, term: Term) -> None:
        """(Re)set the step-down timer to the last moment the lease is certainly still ours minus the margin."""
        self.disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(term.step_down_at, term.lose,
                                   f"no lease renewal for {term.granted_ttl - term.margin:.2f}s")

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def keep(self, term: Term) -> None:
        """Renew until the term is lost; an expired lease loses it for good."""
        period = term.granted_ttl / 4
        while term.valid:
            sent = time.monotonic()
            try:
                reply = await renew(self.client, term.lease_id, max(0.01, term.step_down_at - sent))
            except TRANSIENT as exc:
                log.debug("lease %x renewal failed: %r", term.lease_id, exc)
                await asyncio.sleep(min(0.05, period))
                continue
            if reply.TTL <= 0:
                term.lose(f"lease {term.lease_id:x} expired", definitive=True)
                return
            term.renewed_until = max(term.renewed_until, sent + reply.TTL)
            self.arm(term)
            await asyncio.sleep(max(0.0, sent + period - time.monotonic()))

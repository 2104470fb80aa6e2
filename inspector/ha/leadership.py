"""A replicated inspector's campaign: lead while etcd says so, follow otherwise (DESIGN principle 3).

With an ``[etcd]`` table every replica campaigns (``inspector/ha/election.py``).
This module builds what the leader writes through — the fenced store, the
etcd notification log, the subscription records (the responder's durable
state, ``inspector/response/durable.py``, is built on the store) — and runs
the loop::

    while True:
        term = await election.wait_leader()     # every term is a fresh start
        await term.run(inspector.lead(term))    # load state from etcd, act; cancelled when the term is lost
        await inspector.follow()                # stop acting at once, drop every stream

``Term.run`` cancels the leader's work the moment the term is lost (lease not
renewed in time, key gone, a write refused by the fencing token); every
response runs under it too. A term that resumes with the same token after an
etcd outage is still a fresh term: state is read again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from doctor_common.etcd_guard import EtcdError, NotLeader
from inspector.ha.election import Election
from inspector.ha.etcd_config import EtcdConfig, connect
from inspector.ha.etcd_store import EtcdStore, json_codec
from inspector.ha.term import Term
from notifier.etcd_log import EtcdLog
from notifier.subscriptions import SubscriptionBook

log = logging.getLogger("doctor.inspector.leadership")

RETRY_S = 0.2  # after a term's start-up failed (etcd unavailable while loading) and the term still holds


class Replica(Protocol):
    """What the campaign drives (the inspector, ``inspector/core.py``)."""

    async def lead(self, term: Term) -> None: ...

    async def follow(self) -> None: ...


class Leadership:
    def __init__(self, e: EtcdConfig, *, node_id: str, advertise: str, advertise_agents: str, retention: int,
                 subscription_expiry_s: float) -> None:
        self.config = e
        self.client = connect(e)
        self.election = Election(self.client, e, node_id=node_id, endpoint=advertise,
                                 agent_endpoint=advertise_agents)
        self.store = EtcdStore(self.client, e.prefix, self.election, node_id=node_id,
                               write_deadline_s=e.write_deadline_s)
        self.log = EtcdLog(self.client, e.prefix, retention=retention, guard=self.election,
                           call_timeout_s=e.call_timeout_s, write_deadline_s=e.write_deadline_s)
        self.book = SubscriptionBook(self.store.collection("subscriptions", *json_codec()), subscription_expiry_s)
        self.terms = 0
        self.task: asyncio.Task[None] | None = None

    def start(self, inspector: Replica) -> asyncio.Task[None]:
        self.election.start()
        self.task = asyncio.create_task(self._run(inspector), name="leadership")
        return self.task

    async def _run(self, inspector: Replica) -> None:
        while True:
            term = await self.election.wait_leader()
            self.terms += 1
            try:
                await term.run(inspector.lead(term))
            except NotLeader:
                pass
            except EtcdError as exc:  # etcd failed us while loading: start over if the term still holds
                log.warning("could not take over (token %d): %s", term.token, exc)
            finally:
                await inspector.follow()
            if term.valid:
                await asyncio.sleep(RETRY_S)

    async def stop_campaign(self) -> None:
        """Stop acting, then hand over at once (revoking the lease deletes the leader key)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.election.close()

    async def close(self) -> None:
        await self.book.close()
        await self.client.close()

"""Streams opened with Keystone tokens end when Keystone stops vouching for them.

A static token is judged again only by a reload (``TokenAuth.still_consumer``);
a Keystone token can be revoked or expire at any time, so every replica asks
Keystone again about the tokens of its live streams, once per ``cache_s``
(through the validator's cache: one request per token at most). A stream
whose token is refused ends like a withdrawn credential (REVOKED: the client
subscribes again with a valid token and resumes from its cursor). An outage
of Keystone ends none.
"""

from __future__ import annotations

import asyncio
import logging

from doctor_common.auth import KEYSTONE_PREFIX, TokenAuth
from notifier.registry import REVOKED, Registry, Subscriber

log = logging.getLogger("doctor.notifier")

IDLE_PERIOD_S = 5.0  # how often to look again while Keystone is off (a reload may turn it on)


async def watch_keystone_streams(auth: TokenAuth, registry: Registry) -> None:
    """Forever: end the streams whose Keystone token no longer stands for their principal."""
    while True:
        keystone = auth.keystone
        await asyncio.sleep(max(1.0, keystone.settings.cache_s) if keystone is not None else IDLE_PERIOD_S)
        try:
            await sweep(auth, registry)
        except Exception:  # noqa: BLE001 - one failed pass must not stop the next
            log.exception("checking the Keystone tokens of live streams failed; trying again next period")


async def sweep(auth: TokenAuth, registry: Registry) -> int:
    """One pass; returns how many streams it ended."""
    if auth.keystone is None:
        return 0
    subs = [s for s in registry if not s.ended_by and s.principal.name.startswith(KEYSTONE_PREFIX)]
    gate = asyncio.Semaphore(auth.keystone.settings.max_in_flight)  # queue here, not past the validator's bound

    async def check(sub: Subscriber) -> bool:
        async with gate:
            return await auth.recheck(sub.credential, sub.principal)
    verdicts = await asyncio.gather(*(check(s) for s in subs))
    ended = [s for s, ok in zip(subs, verdicts) if not ok]
    for sub in ended:
        sub.end(REVOKED)
    if ended:
        log.warning("Keystone no longer vouches for the tokens of %d streams (revoked, expired or other roles): "
                    "ended", len(ended))
    return len(ended)

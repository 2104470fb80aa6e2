"""Writes only the leader may make, and the etcd errors they raise (DESIGN principle 3).

Both the inspector's state and the notifier's log are written through a
``Guard``: a transaction that etcd applies only while the leader key's create
revision (the fencing token) is still the writer's. It lives here, below
both, so the notifier never imports the inspector.

Exceptions::

    EtcdError
    ├── NotLeader        this process does not (or no longer) hold leadership
    └── EtcdUnavailable  etcd did not answer in time (outcome unknown)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, Protocol

import aetcd
from aetcd import exceptions as aetcd_exc
from aetcd import rpc


class EtcdError(Exception):
    """Base of this package's etcd errors."""


class NotLeader(EtcdError):
    """The write or action needs leadership this process does not hold (any more)."""


class EtcdUnavailable(EtcdError):
    """etcd did not answer in time; a write may or may not have been applied."""


TRANSIENT = (aetcd_exc.ClientError, rpc.AioRpcError, asyncio.TimeoutError)


class Guard(Protocol):
    """What a guarded writer needs: a transaction that runs only while we lead."""

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]: ...


def decode_json(value: bytes) -> dict[str, Any]:
    """A leader key's value (JSON object); empty when it is not one."""
    try:
        out = json.loads(value)
        return out if isinstance(out, dict) else {}
    except ValueError:
        return {}


async def guarded_txn(client: aetcd.Client, leader_key: bytes, token: int, compare: Sequence[Any],
                      success: Sequence[Any], failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
    """Run ``compare → success | failure`` nested in ``create_revision(leader_key) == token``.

    Returns (whether the caller's compares held, the inner raw ``ResponseOp`` list).
    Raises ``NotLeader`` when the leader key is absent or was created by someone
    else, ``EtcdUnavailable`` when etcd did not answer (the outcome is unknown).
    """
    t = client.transactions
    try:
        ok, responses = await client.transaction(
            compare=[t.create(leader_key) == token],
            success=[t.txn(list(compare), list(success), list(failure))],
            failure=[t.get(leader_key)])
    except TRANSIENT as exc:
        raise EtcdUnavailable(f"etcd transaction failed: {exc}") from exc
    if not ok:
        holder = responses[0][0][1] if responses and responses[0] else None
        who = decode_json(holder.value).get("node_id", "?") if holder else "nobody"
        raise NotLeader(f"fencing token {token} is stale: the leader key is held by {who}"
                        + (f" (token {holder.create_revision})" if holder else ""))
    inner = responses[0].response_txn
    return inner.succeeded, list(inner.responses)


class TokenGuard:
    """A guard with a fixed token and no local state (tools, tests): etcd alone decides."""

    def __init__(self, client: aetcd.Client, leader_key: bytes, token: int) -> None:
        self.client, self.leader_key, self.token = client, leader_key, token

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> tuple[bool, list[Any]]:
        return await guarded_txn(self.client, self.leader_key, self.token, compare, success, failure)

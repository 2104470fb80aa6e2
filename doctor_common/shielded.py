"""Run a write to completion even when its caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


def start_shielded(aw: Awaitable[T]) -> "asyncio.Future[T]":
    """``aw`` as a task that a caller's cancellation does not stop; an error nobody awaits is still retrieved
    (no "exception was never retrieved" when the caller left)."""
    task = asyncio.ensure_future(aw)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to completion: a cancelled caller stops waiting, the write goes on (durable state must not be
    left half-written by a client that went away)."""
    return await asyncio.shield(start_shielded(aw))

"""Subscription records outlive their streams for ``expiry_s``, then are forgotten; a consumer that came back in
time keeps its record however long ago it first subscribed."""

import asyncio
import time

from doctor_common.auth import Principal
from notifier.filters import Filter
from notifier.registry import Registry
from notifier.subscriptions import SubscriptionBook

A = Principal("a", project="project-a")


async def _settled(book: SubscriptionBook) -> None:
    """Let the book's background writes and pruning finish (bounded)."""
    for _ in range(100):
        if not book._tasks:
            return
        await asyncio.sleep(0)
    raise AssertionError("the book's background tasks did not finish")


async def test_records_of_consumers_away_past_expiry_are_forgotten_oldest_first() -> None:
    book, reg = SubscriptionBook(expiry_s=60), Registry()
    subs = [reg.add(A, Filter(), 0) for _ in range(4)]
    for s in subs:
        await book.attach(s, b"")
    for s in subs[:3]:
        book.detach(s)
    await _settled(book)
    book.records[subs[0].id].detached_unix -= 120   # left two minutes ago
    book.records[subs[1].id].detached_unix -= 90
    back = reg.add(A, Filter(), 0, subs[1].id)     # ... but came back: its record is live again
    await book.attach(back, b"")
    book.detach(subs[3])                             # the next one leaving prunes
    await _settled(book)
    assert subs[0].id not in book.records
    assert {subs[1].id, subs[2].id, subs[3].id} <= set(book.records)
    assert book.records[subs[1].id].connected


async def test_a_new_term_forgets_what_expired_while_nobody_led() -> None:
    class Store:
        def __init__(self) -> None:
            self.data: dict[str, dict[str, object]] = {}

        async def put(self, item_id: str, item: dict[str, object]) -> None:
            self.data[item_id] = item

        async def delete(self, item_id: str) -> None:
            self.data.pop(item_id, None)

        async def items(self) -> dict[str, dict[str, object]]:
            return dict(self.data)

    store = Store()
    old = SubscriptionBook(store, expiry_s=60)
    reg = Registry()
    subs = [reg.add(A, Filter(), 0) for _ in range(3)]
    for s in subs:
        await old.attach(s, b"")
        old.detach(s)
    await _settled(old)
    store.data[subs[0].id]["detached_unix"] = time.time() - 3600
    new = SubscriptionBook(store, expiry_s=60)
    await new.load()
    assert set(new.records) == {subs[1].id, subs[2].id} and set(store.data) == {subs[1].id, subs[2].id}

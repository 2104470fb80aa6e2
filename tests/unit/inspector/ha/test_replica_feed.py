"""The replica feed's promise to the subscribers it keeps: they are never left waiting on a log it cannot read."""

from __future__ import annotations

from typing import Any

from doctor_common.lab.cloud import wait_for
from inspector.ha.replica_feed import ReplicaFeed


class Unreachable:
    """An etcd log whose every read fails (etcd out of reach)."""
    prefix = b"P/"
    entry_prefix = b"P/log/e/"
    last_key = b"P/log/last"
    client: Any = None

    async def range(self, *_a: Any, **_k: Any) -> Any:
        raise ConnectionError("etcd is out of reach")


async def test_a_leader_that_steps_down_without_etcd_sends_its_subscribers_away() -> None:
    """Started vouching for its subscribers (it led until now), a feed that can read nothing says it is no longer
    fresh once stale_s has passed, so they are told to go elsewhere instead of waiting for entries forever."""
    told: list[bool] = []
    feed = ReplicaFeed(Unreachable(), [], deliver=lambda n: None, position=lambda: 0,  # type: ignore[arg-type]
                       skip_to=lambda s: None, on_fresh=told.append, check_s=0.05, stale_s=0.3)
    feed.start(vouch=True)
    try:
        assert feed.fresh()
        await wait_for(lambda: told == [False], 5, 0.01, "the feed to give up on its subscribers")
        assert not feed.fresh()
    finally:
        await feed.stop()


async def test_a_feed_that_dies_says_so() -> None:
    """A feed task that ends other than through stop() (a bug, a stray cancellation) tells the replica."""
    told: list[bool] = []
    feed = ReplicaFeed(Unreachable(), [], deliver=lambda n: None, position=lambda: 0,  # type: ignore[arg-type]
                       skip_to=lambda s: None, on_fresh=told.append, check_s=0.05, stale_s=5.0)
    feed.start(vouch=True)
    assert feed._task is not None
    feed._task.cancel()
    await wait_for(lambda: told == [False], 5, 0.01, "the feed's end to be reported")
    assert not feed.running

"""Host liveness transitions (DESIGN principle 4)."""

import asyncio

from doctor_common.api import agent_pb2
from doctor_common.lab.cloud import wait_for
from inspector.southbound.liveness import AGENT_DOWN, STOPPED, UNREACHABLE, UP, Liveness


def _liveness(timeout: float = 0.2) -> tuple[Liveness, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append((rec.host_id, old, new))
    return Liveness(timeout, on_change), changes


async def test_stream_closed_right_after_traffic_means_agent_down() -> None:
    """The peer's kernel closed a lively stream: the agent died, the host did not."""
    lv, changes = _liveness()
    rec, s = lv.record("h"), object()
    await lv.attach(rec, s, agent_pb2.Hello(host_id="h", boot_id="b"), "peer")
    await lv.detach(rec, s)
    assert rec.liveness == AGENT_DOWN and changes[-1] == ("h", UP, AGENT_DOWN)


async def test_goodbye_then_close_is_an_orderly_stop() -> None:
    """An agent that said Goodbye is stopped, not dead."""
    lv, _ = _liveness()
    rec, s = lv.record("h"), object()
    await lv.attach(rec, s, agent_pb2.Hello(host_id="h", boot_id="b"), "peer")
    rec.goodbye = True
    await lv.detach(rec, s)
    assert rec.liveness == STOPPED


async def test_silence_means_unreachable_and_traffic_brings_it_back() -> None:
    """No message for longer than the timeout: unreachable; the next message: up again."""
    lv, changes = _liveness(0.05)
    rec = lv.record("h")
    await lv.attach(rec, object(), agent_pb2.Hello(host_id="h", boot_id="b"), "peer")
    watcher = asyncio.create_task(lv.watch())
    try:
        await wait_for(lambda: rec.liveness == UNREACHABLE, 2.0, what="unreachable")
        await lv.heard(rec)
        assert rec.liveness == UP and [c[2] for c in changes] == [UP, UNREACHABLE, UP]
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_a_replaced_stream_closing_changes_nothing() -> None:
    """When an agent reconnects before its old stream is torn down, the old stream's end is ignored."""
    lv, _ = _liveness()
    rec = lv.record("h")
    old, new = object(), object()
    await lv.attach(rec, old, agent_pb2.Hello(host_id="h", boot_id="b1"), "p")
    await lv.attach(rec, new, agent_pb2.Hello(host_id="h", boot_id="b2"), "p")
    await lv.detach(rec, old)
    assert rec.liveness == UP and rec.connected and rec.last_sequence == 0

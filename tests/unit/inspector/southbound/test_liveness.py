"""Host liveness transitions (DESIGN principle 4)."""

import asyncio
import time

import pytest

from doctor_common.api import agent_pb2
from doctor_common.lab.cloud import wait_for
from inspector.southbound.lag import Lag
from inspector.southbound.liveness import AGENT_DOWN, STOPPED, UNREACHABLE, UP, HostRecord, Liveness


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


async def test_a_stalled_inspector_does_not_count_its_own_stall_as_silence() -> None:
    """The loop blocked for three timeouts (overload, a pause): hosts heard just before are not unreachable once
    it runs again - their messages of that time are still unread - and a host that stays silent still is, later."""
    lv, changes = _liveness(0.1)
    rec = lv.record("h")
    await lv.attach(rec, object(), agent_pb2.Hello(host_id="h", boot_id="b"), "peer")
    tasks = [asyncio.create_task(lv.lag.run()), asyncio.create_task(lv.watch())]
    try:
        await asyncio.sleep(0.03)
        blocked = asyncio.Event()

        def block() -> None:
            time.sleep(0.3)  # the whole process stalls: nobody can read the agent's heartbeats
            blocked.set()
        asyncio.get_running_loop().call_soon(block)
        await blocked.wait()
        # right after the stall the watch runs (every 20 ms) before the heartbeats queued meanwhile would be read
        await asyncio.sleep(0.06)
        assert rec.liveness == UP and lv.lag.lost_s >= 0.25
        await lv.heard(rec)  # the queued heartbeat
        await wait_for(lambda: rec.liveness == UNREACHABLE, 2.0, what="real silence after the stall")
        assert [c[2] for c in changes] == [UP, UNREACHABLE]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_while_reads_lag_nobody_is_declared_unreachable() -> None:
    """Heartbeats read long after they were sent (the inspector is behind its streams): silence is not judged
    until reads catch up."""
    lv, _ = _liveness(0.05)
    rec = lv.record("h")
    await lv.attach(rec, object(), agent_pb2.Hello(host_id="h", boot_id="b"), "peer")
    watcher = asyncio.create_task(lv.watch())
    try:
        for i in range(20):
            lv.lag.observe_read_delay(f"h{i}", 1.0)
        await asyncio.sleep(0.3)
        assert rec.liveness == UP and lv.lag.behind()
        for i in range(20):
            lv.lag.observe_read_delay(f"h{i}", 0.0)  # caught up
        await wait_for(lambda: rec.liveness == UNREACHABLE, 3.0, what="unreachable once caught up")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def test_a_stall_is_counted_once_whoever_notices_it() -> None:
    """Two loops noticing the same late wake-up add it to the lost time once."""
    lag = Lag(bound_s=0.05, hold_s=0.1, interval_s=0.02)
    t0 = time.monotonic()
    lag._last_check = t0
    assert lag.check(t0 + 0.5) > 0.4
    assert lag.check(t0 + 0.5) == 0.0
    assert 0.45 < lag.lost_s < 0.5 and lag.behind(t0 + 0.55) and not lag.behind(t0 + 0.7)


def test_one_agent_with_a_wrong_clock_does_not_hold_up_the_fleet() -> None:
    """The read delay is a median across hosts of each one's latest: one agent sending stale timestamps, however
    fast, cannot make the inspector believe it is behind (and so stop declaring anybody unreachable)."""
    lag = Lag(bound_s=0.05, hold_s=0.1)
    for i in range(5):
        lag.observe_read_delay(f"h{i}", 0.001)
    for _ in range(1000):
        lag.observe_read_delay("liar", 30.0)
    assert lag.read_delay_s() < 0.05 and not lag.behind()


async def test_a_close_the_peer_left_unanswered_is_silence_and_an_answered_one_agent_death() -> None:
    """Over TCP the kernel's word decides (southbound/tcp_peer.py): unanswered, unreachable at once (no waiting
    for a heartbeat); answered, agent down. A unix-socket agent is never asked."""
    asked: list[str] = []
    verdict = {"ipv4:10.0.0.1:5": True, "ipv4:10.0.0.2:5": False}

    async def peer_silent(peer: str) -> bool:
        asked.append(peer)
        return verdict[peer]
    changes: list[tuple[str, str]] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append((rec.host_id, new))
    lv = Liveness(1.0, on_change, heartbeat_s=3.0, peer_silent=peer_silent)
    for host, peer in (("silent", "ipv4:10.0.0.1:5"), ("dead-agent", "ipv4:10.0.0.2:5"), ("local", "unix:/s")):
        rec, s = lv.record(host), object()
        await lv.attach(rec, s, agent_pb2.Hello(host_id=host, boot_id="b"), peer)
        await lv.detach(rec, s)
    await wait_for(lambda: len(changes) == 6, 2.0, what="every verdict")
    assert lv.hosts["silent"].liveness == UNREACHABLE and lv.hosts["dead-agent"].liveness == AGENT_DOWN
    assert lv.hosts["local"].liveness == AGENT_DOWN
    assert sorted(asked) == ["ipv4:10.0.0.1:5", "ipv4:10.0.0.2:5"]


async def test_rare_heartbeats_stretch_the_silence_limit_not_the_timeout() -> None:
    """Heartbeats every 3 s with a 1 s timeout: a healthy agent between two heartbeats is not declared (the limit
    is 2.5 intervals); the transport carries silence detection meanwhile."""
    lv = Liveness(1.0, lambda *_: asyncio.sleep(0), heartbeat_s=3.0)
    assert lv.silence_limit_s == 7.5
    assert Liveness(1.5, lambda *_: asyncio.sleep(0), heartbeat_s=0.5).silence_limit_s == 1.5


async def test_a_silent_verdict_reached_while_the_inspector_is_behind_is_not_trusted() -> None:
    """The kernel's evidence may be the inspector's own stall's (ACKs read late): while behind, a connection that
    ended unanswered declares nothing; the silence limit, which discounts the stall, still judges the host."""
    async def peer_silent(_peer: str) -> bool:
        return True
    changes: list[str] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append(new)
    lv = Liveness(1.0, on_change, Lag(bound_s=0.05, hold_s=5.0), heartbeat_s=3.0, peer_silent=peer_silent)
    rec, s = lv.record("h"), object()
    await lv.attach(rec, s, agent_pb2.Hello(host_id="h", boot_id="b"), "ipv4:10.0.0.1:5")
    lv.lag.check()
    time.sleep(0.2)  # the inspector's loop stalls (the behaviour under test, not a wait): 4× the lag bound
    await lv.detach(rec, s)
    await asyncio.wait_for(asyncio.gather(*lv._judging), 10)
    assert rec.liveness == UP and changes == [UP]


async def _closed_in_a_stall(peer_silent_afresh, lag: Lag, timeout_s: float = 1.0, heartbeat_s: float = 3.0,  # type: ignore[no-untyped-def]
                             stall_s: float = 0.2) -> tuple[Liveness, HostRecord, list[str]]:
    """A host whose stream ends, its peer silent by the kernel's word, just after the inspector's loop stalled
    ``stall_s`` (so the close is read while it is behind): the liveness, the host, its transitions so far."""
    async def peer_silent(_peer: str) -> bool:
        return True
    changes: list[str] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append(new)
    lv = Liveness(timeout_s, on_change, lag, heartbeat_s=heartbeat_s, peer_silent=peer_silent,
                  peer_silent_afresh=peer_silent_afresh)
    rec, s = lv.record("h"), object()
    await lv.attach(rec, s, agent_pb2.Hello(host_id="h", boot_id="b"), "ipv4:10.0.0.1:5")
    lv.lag.check()
    time.sleep(stall_s)  # the inspector's loop stalls (the behaviour under test, not a wait)
    await lv.detach(rec, s)
    return lv, rec, changes


@pytest.mark.parametrize(("afresh", "expected"), [(True, UNREACHABLE), (False, AGENT_DOWN), (None, UP)])
async def test_a_close_left_unjudged_by_a_stall_is_judged_afresh_once_on_time(afresh, expected) -> None:  # type: ignore[no-untyped-def]
    """Unanswered while behind: asked again only once the inspector is on time. Fresh silence, unreachable; an
    answer, the agent's death; nothing new, the host is left to the silence limit (still up meanwhile)."""
    asked: list[bool] = []
    lag = Lag(bound_s=0.05, hold_s=0.3)

    async def peer_silent_afresh(_peer: str, on_time, within_s: float, gone) -> bool | None:  # type: ignore[no-untyped-def]
        asked.append(lag.behind())
        assert on_time() and within_s > 0 and not gone()
        return afresh
    lv, rec, changes = await _closed_in_a_stall(peer_silent_afresh, lag)  # a stall of 4× the lag bound
    lv.lag.check()
    assert lv.lag.behind()
    await asyncio.wait_for(asyncio.gather(*lv._judging), 10)
    assert asked == [False]  # asked once, on time
    assert rec.liveness == expected and changes == [UP] + ([expected] if expected != UP else [])
    assert rec.closed_stream is None  # the watch judges it from now on


async def test_a_host_back_during_the_second_look_is_not_judged_by_it() -> None:
    """The agent reconnects while its old connection is looked at again: the look gives up (``gone``), and even a
    silent verdict would change nothing — the host is up on its new stream."""
    looking, release = asyncio.Event(), asyncio.Event()
    gave_up: list[bool] = []

    async def peer_silent_afresh(_peer: str, on_time, within_s: float, gone) -> bool | None:  # type: ignore[no-untyped-def]
        looking.set()
        await release.wait()
        gave_up.append(gone())
        return True
    lv, rec, changes = await _closed_in_a_stall(peer_silent_afresh, Lag(bound_s=0.05, hold_s=0.2))
    await asyncio.wait_for(looking.wait(), 10)
    await lv.attach(rec, object(), agent_pb2.Hello(host_id="h", boot_id="b"), "ipv4:10.0.0.1:6")  # back
    release.set()
    await asyncio.wait_for(asyncio.gather(*lv._judging), 10)
    assert gave_up == [True]
    assert rec.liveness == UP and UNREACHABLE not in changes and rec.closed_stream is None


async def test_a_close_left_unjudged_is_not_asked_again_past_the_silence_limit() -> None:
    """Still behind when the silence limit comes: no fresh look; the watch judges the host (as before)."""
    asked: list[str] = []

    async def peer_silent_afresh(peer: str, on_time, within_s: float, gone) -> bool | None:  # type: ignore[no-untyped-def]
        asked.append(peer)
        return True
    # a stall of 5× the lag bound, held as behind for the next minute
    lv, rec, _ = await _closed_in_a_stall(peer_silent_afresh, Lag(bound_s=0.02, hold_s=60.0), timeout_s=0.1,
                                          heartbeat_s=0.1, stall_s=0.1)
    await asyncio.wait_for(asyncio.gather(*lv._judging), 5.0)
    assert asked == [] and rec.liveness == UP and rec.closed_stream is None


async def test_silence_on_an_open_connection_whose_kernel_answers_is_not_unreachable() -> None:
    """Past the silence limit, a stream still open over TCP is asked about (southbound/tcp_peer.judge_open): its
    kernel acknowledging all we sent is left to the keepalive for its full turn, then means a live host — agent
    down (an alarm, never a fence), up again when it speaks; its kernel silent too, unreachable at once;
    undecided (no socket found), asked again for a silence limit more, then agent down too (no evidence of the
    peer's silence: an alarm, never a fence). A unix-socket agent is never asked: unreachable."""
    verdict: dict[str, bool | None] = {"ipv4:10.0.0.1:5": False, "ipv4:10.0.0.2:5": True, "ipv4:10.0.0.3:5": None}
    asked: list[str] = []

    async def open_peer_silent(peer: str) -> bool | None:
        asked.append(peer)
        return verdict[peer]
    changes: list[tuple[str, str, float]] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append((rec.host_id, new, lv.silence(rec)))
    lv = Liveness(0.2, on_change, Lag(bound_s=1.0, hold_s=0.05), open_peer_silent=open_peer_silent,
                  transport_s=0.3)
    assert lv.stall_after_s == 0.5
    for host, peer in (("stalled", "ipv4:10.0.0.1:5"), ("silent", "ipv4:10.0.0.2:5"), ("unknown", "ipv4:10.0.0.3:5"),
                       ("local", "unix:/s")):
        await lv.attach(lv.record(host), object(), agent_pb2.Hello(host_id=host, boot_id="b"), peer)
    changes.clear()
    watch = asyncio.create_task(lv.watch())
    try:
        await wait_for(lambda: {(h, new) for h, new, _ in changes} == {
            ("stalled", AGENT_DOWN), ("silent", UNREACHABLE), ("local", UNREACHABLE), ("unknown", AGENT_DOWN)}, 5.0,
            what="every silent host judged")
        stalled = lv.hosts["stalled"]
        # the answering one was asked turn after turn (excused, said once), and down only after the keepalive's turn
        assert stalled.connected and asked.count("ipv4:10.0.0.1:5") >= 2
        assert next(s for h, new, s in changes if h == "stalled") >= lv.stall_after_s
        # the undecided one too, and down only a silence limit later still
        assert asked.count("ipv4:10.0.0.3:5") >= 2
        assert next(s for h, new, s in changes if h == "unknown") >= lv.stall_after_s + lv.silence_limit_s
        assert next(s for h, new, s in changes if h == "silent") < lv.stall_after_s
        await lv.heard(stalled)  # it speaks again
        assert stalled.liveness == UP
        verdict["ipv4:10.0.0.1:5"] = True  # and falls silent with its kernel
        await wait_for(lambda: stalled.liveness == UNREACHABLE, 5.0, what="the stalled host declared")
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    assert "unix:/s" not in asked


async def test_an_answered_close_is_an_agents_death_however_long_the_silence_before() -> None:
    """The close of a stream whose host had been silent past the limit (not looked at meanwhile: the inspector
    was behind) but whose kernel answered the close: agent down, never unreachable."""
    async def peer_silent(_peer: str) -> bool:
        return False
    changes: list[str] = []

    async def on_change(rec, old, new):  # type: ignore[no-untyped-def]
        changes.append(new)
    lv = Liveness(0.05, on_change, peer_silent=peer_silent)
    rec, s = lv.record("h"), object()
    await lv.attach(rec, s, agent_pb2.Hello(host_id="h", boot_id="b"), "ipv4:10.0.0.1:5")
    rec.last_seen -= 10.0  # silent for 10 s (the behaviour under test, not a wait)
    await lv.detach(rec, s)
    assert rec.closed_stream is s  # being judged: the watch leaves it alone meanwhile
    await asyncio.wait_for(asyncio.gather(*lv._judging), 10)
    assert changes == [UP, AGENT_DOWN] and rec.closed_stream is None


def test_late_reads_count_at_once_and_on_time_ones_do_not_recount_the_fleet() -> None:
    """The median walks every host: an on-time read leaves it for up to 100 ms, a late one makes it fresh."""
    lag = Lag(bound_s=0.05, hold_s=0.1)
    t = time.monotonic()
    for i in range(3):
        lag.observe_read_delay(f"h{i}", 0.001, now=t)
    assert not lag.behind(t)
    cached = lag._median
    lag.observe_read_delay("h0", 0.002, now=t)
    assert lag._median == cached  # on time: not recounted
    for i in range(3):
        lag.observe_read_delay(f"h{i}", 1.0, now=t)
    assert lag.behind(t)  # late: counted at once, not 100 ms later

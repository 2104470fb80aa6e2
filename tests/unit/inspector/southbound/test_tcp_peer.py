"""The kernel's word on a closed connection: address forms, table parsing, the verdict, one read for many."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspector.southbound import sock_diag, tcp_peer
from inspector.southbound.tcp_peer import PeerSilence, judge, judge_open, listening, proc_keys, read_states


@contextlib.contextmanager
def loopback() -> Iterator[tuple[int, socket.socket, socket.socket, str]]:
    """A real loopback connection: (the server's port, the client's socket, the accepted one, the client as grpc
    names a peer); every socket closed afterwards (closing twice is harmless)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        yield port, client, accepted, f"ipv4:127.0.0.1:{client.getsockname()[1]}"
    finally:
        for s in (client, accepted, server):
            s.close()


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def test_peer_forms_map_to_the_tables_keys() -> None:
    v4, mapped = proc_keys("ipv4:10.99.0.2:40014")
    assert v4 == "0200630A:9C4E"  # the address as the kernel prints it: a native-order u32 (little endian here)
    assert mapped == "0000000000000000FFFF00000200630A:9C4E"
    assert proc_keys("ipv6:[::ffff:10.99.0.2]:40014") == (v4, mapped)
    assert proc_keys("ipv6:%5B::ffff:10.99.0.2%5D:40014") == (v4, mapped)  # as grpc 1.85 writes it
    assert proc_keys("ipv6:%5B::1%5D:80") == ("00000000000000000000000001000000:0050",)
    assert proc_keys("ipv6:[::1]:80") == ("00000000000000000000000001000000:0050",)
    assert proc_keys("unix:/run/doctor/agent.sock") == ()
    assert proc_keys("ipv4:not-an-address:1") == () and proc_keys("ipv4:10.0.0.1:x") == ()


def test_tables_are_read_for_the_asked_peers_on_our_ports(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(HEADER + "".join([
        "   0: 0100630A:C737 0200630A:9C4E 04 0000008A:00000000 01:00000014 00000002     0        0 0 2 x\n",
        "   1: 0100630A:1F90 0200630A:9C4E 01 00000000:00000000 00:00000000 00000000     0        0 0 1 x\n",  # other port
        "   2: 0100630A:C737 0300630A:9C4E 05 00000000:00000000 00:00000000 00000000     0        0 0 1 x\n",  # other peer
    ]))
    found = read_states(["0200630A:9C4E"], {0xC737}, (str(table), str(tmp_path / "missing")))
    assert found == {"0200630A:9C4E": ("FIN_WAIT1", 0x8A, 2, 1, 0)}


@pytest.mark.parametrize("order", [1, -1])
def test_one_peer_on_two_of_our_ports_is_kept_twice_and_judged_by_the_question(tmp_path: Path, order: int) -> None:
    """grpc names a peer by its address and port alone; the same pair may be connected to two of our listeners.
    Both connections are kept (``Twins``, in a stable order). A closed stream is judged by the closing one (the
    established twin is another connection, and idle it shows nothing); an open stream by an established one."""
    table = tmp_path / "tcp"
    rows = [
        "   0: 0100630A:C737 0200630A:9C4E 04 0000008A:00000000 01:00000014 00000003     0        0 0 2 x\n",
        "   1: 0100630A:C738 0200630A:9C4E 01 00000000:00000000 00:00000000 00000000     0        0 0 1 x\n",
    ]
    table.write_text(HEADER + "".join(rows[::order]))
    found = read_states(["0200630A:9C4E"], {0xC737, 0xC738}, (str(table),))
    state = found["0200630A:9C4E"]
    assert isinstance(state, sock_diag.Twins) and sorted(state) == list(state)
    assert set(state) == {("FIN_WAIT1", 0x8A, 3, 1, 0), ("ESTABLISHED", 0, 0, 0, 0)}
    assert judge(tcp_peer.for_closed(state)) is True  # the closed stream's own socket: unanswered
    assert judge_open(tcp_peer.for_open(state)) is False  # the open one: established, nothing unanswered


def test_which_twin_answers_which_question() -> None:
    silent_close = ("FIN_WAIT1", 10, 3, 1, 0)
    answered_close = ("FIN_WAIT2", 0, 0, 0, 0)
    idle = ("ESTABLISHED", 0, 0, 0, 0)
    unanswered_open = ("ESTABLISHED", 20, 2, 1, 0)
    twins = sock_diag.Twins
    assert tcp_peer.for_closed(twins((silent_close, idle))) == silent_close  # an idle twin is no evidence
    assert tcp_peer.for_closed(twins((silent_close, answered_close))) == answered_close  # its kernel answered
    assert tcp_peer.for_closed(twins((idle, unanswered_open))) is None  # ours is gone: as without a twin
    assert tcp_peer.for_open(twins((unanswered_open, idle))) == idle  # a dead twin: the live one speaks
    assert tcp_peer.for_open(twins((silent_close, answered_close))) == answered_close
    assert tcp_peer.for_closed(silent_close) == silent_close and tcp_peer.for_open(None) is None


async def test_a_second_look_is_not_made_between_several_closing_twins(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Their counts cannot be compared look to look (which is which?): no verdict, never a reason to fence."""
    twins = sock_diag.Twins(sorted([("FIN_WAIT1", 10, 1, 1, 0), ("FIN_WAIT1", 10, 4, 1, 0)]))
    monkeypatch.setattr(tcp_peer, "connection_states", lambda keys, ports: {k: twins for k in keys})
    peers = PeerSilence(lambda: {1})
    assert await peers.silent_afresh("ipv4:10.99.0.2:40014", lambda: True, 1.0) is None


@pytest.mark.parametrize("libc", [True, False])
@pytest.mark.parametrize("asked", [1, tcp_peer.FIND_KEYS_MAX + 1])
def test_a_table_is_searched_for_the_peer_in_its_remote_column_only(tmp_path: Path, monkeypatch, libc: bool,  # type: ignore[no-untyped-def]
                                                                    asked: int) -> None:
    """Found by a search of the text (a few asked) or by every line (many): the same answer. A line holding the
    key as its *local* address (the agent's own end, in the same namespace) is not the connection asked."""
    if not libc:
        monkeypatch.setattr(tcp_peer, "_LIBC", None)
    monkeypatch.setattr(tcp_peer, "READ_CHUNK", 64)  # the C library's reads, chunk after chunk
    table = tmp_path / "tcp"
    table.write_text(HEADER + "".join([
        "   0: 0200630A:9C4E 0100630A:C737 01 00000000:00000000 00:00000000 00000000     0        0 0 1 x\n",  # its end
        "   1: 0100630A:C737 0200630A:9C4E 04 0000008A:00000000 01:00000014 00000002     0        0 0 2 x\n",
    ]))
    keys = ["0200630A:9C4E"] + [f"0900630A:{port:04X}" for port in range(asked - 1)]
    assert read_states(keys, {0xC737}, (str(table),)) == {"0200630A:9C4E": ("FIN_WAIT1", 0x8A, 2, 1, 0)}


def test_a_live_table_is_read_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The C library's reads of /proc, chunk after chunk, give the whole table (one page per kernel read)."""
    monkeypatch.setattr(tcp_peer, "READ_CHUNK", 1000)
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(loopback()) for _ in range(60)]  # more than a page of connections
        text = tcp_peer._text("/proc/net/tcp")
        assert text is not None
        for port, *_ in conns:
            assert f":{port:04X} ".encode() in text
        assert len(text.splitlines()) > 60


def test_the_verdict() -> None:
    assert judge(None) is False                           # gone: the peer's kernel closed it or answered our FIN
    assert judge(("TIME_WAIT", 0, 0, 3, 0)) is False and judge(("FIN_WAIT2", 0, 0, 0, 0)) is False
    assert judge(("CLOSE_WAIT", 0, 0, 0, 0)) is False and judge(("LAST_ACK", 1, 0, 1, 0)) is False
    assert judge(("FIN_WAIT1", 138, 2, 1, 0)) is True     # the keepalive's pings never acknowledged
    assert judge(("FIN_WAIT1", 1, 2, 1, 0)) is True       # our FIN retransmitted twice
    assert judge(("FIN_WAIT1", 1, 1, 1, 0)) is None       # once: a live peer's delayed ACK can lose that race
    assert judge(("FIN_WAIT1", 1, 0, 1, 0)) is None       # a delayed ACK may still come: look again
    assert judge(("FIN_WAIT1", 40, 0, 1, 0)) is None      # bytes written just now, not yet acknowledged: the same
    assert judge(("FIN_WAIT1", 9000, 3, 4, 0)) is None    # behind a full window, probes answered so far: look again
    assert judge(("FIN_WAIT1", 9000, 0, 4, 1)) is None    # one probe out: its answer may be on the way
    assert judge(("FIN_WAIT1", 9000, 0, 4, 2)) is True    # two window probes unanswered: nobody is there
    assert judge(("ESTABLISHED", 0, 0, 0, 0)) is None


async def test_a_live_connection_is_not_silent_and_many_questions_share_one_read(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A real loopback connection, still open (the peer ended nothing): looked at until the last look, then
    judged answered; one read of the tables per look. Fifty questions asked in the same turn share one read
    (asked over several looks, whose sleeps a busy machine may wake in different turns, they could not)."""
    reads = []
    real = tcp_peer.connection_states

    def counting(keys, ports):  # type: ignore[no-untyped-def]
        reads.append(len(list(keys)))
        return real(keys, ports)
    monkeypatch.setattr(tcp_peer, "connection_states", counting)
    monkeypatch.setattr(tcp_peer, "LOOKS_S", (0.01, 0.01))
    with loopback() as (port, _client, _accepted, peer):
        peers = PeerSilence(lambda: {port})
        assert await peers._state(proc_keys(peer)) == ("ESTABLISHED", 0, 0, 0, 0)
        reads.clear()
        assert await peers.silent(peer) is False
        assert len(reads) == 3, reads  # one read per look: the first, then one after each of LOOKS_S
        reads.clear()
        monkeypatch.setattr(tcp_peer, "LOOKS_S", ())  # one look: fifty questions asked in the same turn
        verdicts = await asyncio.gather(*(peers.silent(peer) for _ in range(50)))
        assert verdicts == [False] * 50
        assert len(reads) == 1, reads  # one read, whatever the number of questions


@pytest.mark.parametrize(("entries", "silent"), [
    # a live peer on an overloaded machine: its ACK of our FIN late, and our own retransmission timer too
    ([("FIN_WAIT1", 1, 0, 1, 0)] * 4, False),
    # a delayed ACK that lost the race against our first retransmission timeout, then came
    ([("FIN_WAIT1", 1, 1, 1, 0), ("FIN_WAIT2", 0, 0, 0, 0)], False),
    # unanswered across the looks, retransmitted once: silent at the last look
    ([("FIN_WAIT1", 1, 0, 1, 0)] * 3 + [("FIN_WAIT1", 1, 1, 1, 0)], True),
    # retransmitted twice: silent at once
    ([("FIN_WAIT1", 138, 2, 1, 0)], True),
])
async def test_a_closed_connection_is_silent_only_with_retransmissions(monkeypatch, entries, silent) -> None:  # type: ignore[no-untyped-def]
    """Unacknowledged alone is no evidence (in a 10,000-agent connect storm, live peers' FINs stayed unacknowledged
    for 300 ms with nothing retransmitted); one retransmission is evidence only if nothing came after it."""
    looks = iter(entries)
    last = entries[-1]

    def states(keys, ports, tables=tcp_peer.TABLES):  # type: ignore[no-untyped-def]
        return {list(keys)[0]: next(looks, last)}  # one entry per look, whatever the number of keys
    monkeypatch.setattr(tcp_peer, "connection_states", states)
    monkeypatch.setattr(tcp_peer, "LOOKS_S", (0.01, 0.01, 0.01))
    assert await PeerSilence(lambda: {9000}).silent("ipv4:127.0.0.1:41382") is silent


async def test_a_closed_connection_is_not_silent() -> None:
    """The peer closed (FIN, as a killed agent's kernel does): no socket left in a silent state."""
    with loopback() as (port, client, accepted, peer):
        client.close()
        accepted.close()
    assert await PeerSilence(lambda: {port}).silent(peer) is False


async def test_a_peer_that_stopped_reading_is_not_silent() -> None:
    """A live host whose agent reads nothing (frozen, wedged) with its receive window full: our close leaves
    FIN_WAIT1 behind data it has no room for, and its kernel answers our window probes — an agent's death."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.setblocking(False)
    try:
        for _ in range(10_000):  # bounded: until the peer's window and our send buffer are full
            accepted.send(b"x" * 65536)
    except BlockingIOError:
        pass
    peer = f"ipv4:127.0.0.1:{client.getsockname()[1]}"
    accepted.close()
    try:
        entry = read_states(proc_keys(peer), {port}).get(proc_keys(peer)[0])
        assert entry is not None and entry[0] == "FIN_WAIT1"
        asked = sock_diag.states(proc_keys(peer), {port})  # the netlink answer, the same connection
        assert asked is not None and asked[proc_keys(peer)[0]][0] == "FIN_WAIT1"
        assert asked[proc_keys(peer)[0]][3] in (1, 4)  # a loss probe first, then the full window's probes
        assert await PeerSilence(lambda: {port}).silent(peer) is False
    finally:
        client.close()
        server.close()


def test_the_verdict_on_an_open_connection() -> None:
    """An agent silent past the limit on a connection still open: the kernel's word on the host."""
    assert judge_open(("ESTABLISHED", 0, 0, 0, 0)) is False     # nothing of ours waits: the kernel answers
    assert judge_open(("ESTABLISHED", 17, 0, 1, 0)) is None     # sent just now, not yet retransmitted
    assert judge_open(("ESTABLISHED", 34, 2, 1, 0)) is True     # our pings retransmitted, unanswered: silent
    assert judge_open(("ESTABLISHED", 17, 1, 1, 0)) is None     # once: a delayed ACK may have lost the race
    assert judge_open(("ESTABLISHED", 9000, 0, 4, 1)) is None   # behind a full window, one probe out
    assert judge_open(("ESTABLISHED", 9000, 0, 4, 2)) is True   # two window probes unanswered
    # closed, its end not read yet by the inspector: judged as a close; no socket at all: undecided
    assert judge_open(None) is None and judge_open(("FIN_WAIT2", 0, 0, 0, 0)) is False
    assert judge_open(("CLOSE_WAIT", 0, 0, 0, 0)) is False
    assert judge_open(("FIN_WAIT1", 1, 2, 1, 0)) is True and judge_open(("FIN_WAIT1", 1, 1, 1, 0)) is None


async def test_an_open_connection_whose_kernel_answers_is_not_silent() -> None:
    """A real loopback connection, open and idle (the agent says nothing, its kernel is there): answered. Closed
    by the peer since (CLOSE_WAIT, the inspector not having read the end): answered too."""
    with loopback() as (port, client, accepted, peer):
        peers = PeerSilence(lambda: {port})
        accepted.sendall(b"ping")  # what the keepalive sends: acknowledged by the peer's kernel, never read
        assert (await peers._state(proc_keys(peer)))[0] == "ESTABLISHED"
        assert await peers.open_silent(peer) is False
        assert client.recv(4) == b"ping"
        client.close()  # the peer's kernel closed it (its agent died) before the inspector read the stream's end
        assert (await peers._state(proc_keys(peer)))[0] == "CLOSE_WAIT"
        assert await peers.open_silent(peer) is False
        accepted.close()  # gone from the tables: nothing to tell by here (the silence decides)
        assert await peers.open_silent(peer) is None
        assert await PeerSilence(lambda: {port}).open_silent("unix:/run/agent.sock") is None


def test_the_tables_are_trusted_only_if_they_show_our_own_listener(tmp_path: Path) -> None:
    """At start-up the inspector looks for its own listening socket: found, the kernel's word is read; not found
    (a masked /proc, another namespace's tables), it judges by heartbeats alone."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        assert listening({port})
        empty = tmp_path / "tcp"
        empty.write_text(HEADER)
        assert not listening({port}, (str(empty), str(tmp_path / "missing")))
    finally:
        server.close()


W1 = "FIN_WAIT1"


@pytest.mark.parametrize(("entries", "on_time", "closed", "verdict"), [
    # silent: one retransmission more after a look on time, still unanswered past any delayed ACK
    ([(W1, 138, 3, 1, 0), (W1, 138, 4, 1, 0)], [], None, True),
    # silent: two more after a look on time (the first went unanswered until the next was sent)
    ([(W1, 138, 3, 1, 0), (W1, 138, 5, 1, 0)], [], None, True),
    # one more, then answered within a delayed ACK's time: a live peer
    ([(W1, 138, 3, 1, 0), (W1, 138, 4, 1, 0), ("FIN_WAIT2", 0, 0, 0, 0)], [], None, False),
    # the peer's kernel acknowledged at last: the socket left FIN_WAIT1
    ([(W1, 138, 3, 1, 0), ("FIN_WAIT2", 0, 0, 0, 0)], [], None, False),
    # the peer answered part of it: the count restarted
    ([(W1, 138, 3, 1, 0), (W1, 9, 0, 1, 0)], [], None, False),
    # lower than at the close's own look: the peer answered meanwhile
    ([(W1, 9, 0, 1, 0)], [], (W1, 138, 2, 1, 0), False),
    # a live host's frozen agent answers each window probe at once: 0, 1, 0 — answered, never silent
    ([(W1, 0, 0, 4, 0), (W1, 0, 0, 4, 1), (W1, 0, 0, 4, 0)], [], None, False),
    # the retransmission came while the inspector was behind again (its look untrusted): not counted
    ([(W1, 138, 3, 1, 0), (W1, 138, 4, 1, 0)], [True, True, True, False], None, None),
    # nothing new at all within the time given
    ([(W1, 138, 3, 1, 0)], [], None, None),
])
async def test_a_close_judged_afresh_needs_something_unanswered_since_a_look_on_time(  # type: ignore[no-untyped-def]
        monkeypatch, entries, on_time, closed, verdict) -> None:
    """A close found unanswered while the inspector was behind: only what our kernel sent after a look made on
    time, left unanswered longer than a delayed ACK (or until the next retransmission) with the inspector still
    on time, is silence; any answer — against that look, the one before, or the close's own — is the agent's
    death."""
    looks = iter(entries)
    last = entries[-1]
    times = iter(on_time)

    def states(keys, ports):  # type: ignore[no-untyped-def]
        return {list(keys)[0]: next(looks, last)}  # one entry per look
    monkeypatch.setattr(tcp_peer, "connection_states", states)
    monkeypatch.setattr(tcp_peer, "AFRESH_LOOK_S", 0.01)
    monkeypatch.setattr(tcp_peer, "AFRESH_CONFIRM_S", 0.05)
    peers = PeerSilence(lambda: {9000})
    peer = "ipv4:127.0.0.1:41382"
    if closed is not None:
        peers._closed[peer] = closed
    got = await peers.silent_afresh(peer, lambda: next(times, True), 0.3)
    assert got is verdict


async def test_a_close_judged_afresh_gives_up_when_the_host_is_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tcp_peer, "connection_states", lambda keys, ports: {list(keys)[0]: (W1, 138, 3, 1, 0)})
    monkeypatch.setattr(tcp_peer, "AFRESH_LOOK_S", 0.01)
    back = iter([False, False, True])
    assert await PeerSilence(lambda: {9000}).silent_afresh("ipv4:127.0.0.1:41382", lambda: True, 5.0,
                                                           lambda: next(back, True)) is None


async def test_a_silent_close_is_kept_for_its_second_look(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The close's verdict keeps what it saw, so a second look can tell an answer that came since."""
    monkeypatch.setattr(tcp_peer, "connection_states", lambda keys, ports: {list(keys)[0]: (W1, 138, 2, 1, 0)})
    peers = PeerSilence(lambda: {9000})
    assert await peers.silent("ipv4:127.0.0.1:41382") is True
    assert peers._closed == {"ipv4:127.0.0.1:41382": (W1, 138, 2, 1, 0)}


async def test_a_close_judged_afresh_is_not_silent_once_the_peer_closed() -> None:
    """A real socket: the peer closed its end and acknowledged ours, so nothing is left in FIN_WAIT1."""
    with loopback() as (port, client, accepted, peer):
        client.close()
        accepted.close()
    assert await PeerSilence(lambda: {port}).silent_afresh(peer, lambda: True, 0.5) is False

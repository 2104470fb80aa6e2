"""The kernel's state of the connections asked, through NETLINK_SOCK_DIAG: the same answer as /proc's tables."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from inspector.southbound import sock_diag, tcp_peer
from inspector.southbound.tcp_peer import proc_keys, read_states


@contextlib.contextmanager
def connections(count: int, host: str = "127.0.0.1") -> Iterator[tuple[int, list[tuple[socket.socket, socket.socket]]]]:
    """``count`` real connections to one listener on ``host``: (its port, [(client, accepted)]); all closed after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.create_server((host, 0), family=family)
    port = server.getsockname()[1]
    pairs = []
    try:
        for _ in range(count):
            client = socket.create_connection((host, port))
            pairs.append((client, server.accept()[0]))
        yield port, pairs
    finally:
        for client, accepted in pairs:
            client.close()
            accepted.close()
        server.close()


def _peer(client: socket.socket) -> str:
    host, port = client.getsockname()[:2]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


@pytest.mark.parametrize("count", [2, sock_diag.KEYS_PER_ASK + 6])  # one request, and several
def test_the_connections_asked_are_answered_as_the_tables_answer(count: int) -> None:
    with connections(count) as (port, pairs):
        pairs[0][0].close()  # one closed by its peer: the server's end in CLOSE_WAIT
        keys = [k for client, _ in pairs[1:] for k in proc_keys(_peer(client))]
        asked = sock_diag.states(keys, {port})
        assert asked is not None  # the kernel accepted the filter
        assert asked == read_states(keys, {port})
        assert len(asked) == count - 1  # each open one, and nothing else (not the listener, not other ports)


def test_a_closed_connection_and_a_peer_not_asked() -> None:
    with connections(3) as (port, pairs):
        closed = _peer(pairs[0][0])
        pairs[0][1].close()  # our end closed first: the kernel keeps it (FIN_WAIT2, or TIME_WAIT once the peer closes)
        pairs[0][0].close()
        keys = list(proc_keys(closed)) + list(proc_keys(_peer(pairs[1][0])))
        asked = sock_diag.states(keys, {port})
        assert asked is not None and asked == read_states(keys, {port})
        assert asked[proc_keys(closed)[0]][0] in ("FIN_WAIT2", "TIME_WAIT")
        assert proc_keys(_peer(pairs[2][0]))[0] not in asked  # not asked: not answered
        assert sock_diag.states(keys, {port + 1 if port < 65535 else port - 1}) == {}  # another listener's port


def test_one_client_port_connected_to_two_of_our_listeners_is_answered_once() -> None:
    """The kernel lets one local address and port connect to two destinations: both our listeners are asked, and
    both connections come back (``Twins``, in a stable order), as from the tables; one closed at our end since
    shows in its own state."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for server in servers:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            client.bind(("127.0.0.1", clients[0].getsockname()[1] if clients else 0))
            client.connect(server.getsockname())
            clients.append(client)
            accepted.append(server.accept()[0])
        keys = list(proc_keys(_peer(clients[0])))
        assert _peer(clients[0]) == _peer(clients[1])
        ports = {s.getsockname()[1] for s in servers}
        asked = sock_diag.states(keys, ports)
        assert asked is not None and asked == read_states(keys, ports)
        assert list(asked.values()) == [sock_diag.Twins([("ESTABLISHED", 0, 0, 0, 0)] * 2)]
        accepted[0].close()  # our end of one closes: FIN_WAIT2 once the peer acknowledged
        deadline = time.monotonic() + 5
        while "FIN_WAIT2" not in str(read_states(keys, ports)) and time.monotonic() < deadline:
            time.sleep(0.01)  # the peer's ACK of our FIN is on its way
        asked = sock_diag.states(keys, ports)
        assert asked is not None and asked == read_states(keys, ports)
        [state] = asked.values()
        assert isinstance(state, sock_diag.Twins) and sorted(e[0] for e in state)[0] == "ESTABLISHED"
        closing = tcp_peer.for_closed(state)
        assert closing is not None and closing[0] in ("FIN_WAIT1", "FIN_WAIT2")  # (the peer's ACK on its way)
        assert tcp_peer.for_open(state)[0] == "ESTABLISHED"
    finally:
        for s in [*clients, *accepted, *servers]:
            s.close()


def test_ipv6_connections() -> None:
    try:
        ctx = connections(2, "::1")
        port, pairs = ctx.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback in this namespace")
    try:
        keys = [k for client, _ in pairs for k in proc_keys(_peer(client))]
        asked = sock_diag.states(keys, {port})
        assert asked is not None and len(asked) == 2 and asked == read_states(keys, {port})
    finally:
        ctx.__exit__(None, None, None)


def test_where_sock_diag_cannot_be_asked_the_tables_are_read(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sock_diag, "NETLINK_SOCK_DIAG", 99)  # no such netlink family: the socket is refused
    monkeypatch.setattr(sock_diag, "_unavailable_until", 0.0)
    with connections(1) as (port, pairs):
        keys = proc_keys(_peer(pairs[0][0]))
        assert sock_diag.states(keys, {port}) is None
        assert tcp_peer.connection_states(keys, {port}) == read_states(keys, {port}) != {}
        # and not asked again for a while (a sandbox that swallows requests would cost each look its timeout)
        monkeypatch.setattr(sock_diag, "NETLINK_SOCK_DIAG", 4)
        assert sock_diag.states(keys, {port}) is None
        monkeypatch.setattr(sock_diag, "_unavailable_until", 0.0)
        assert sock_diag.states(keys, {port}) == read_states(keys, {port})


def test_a_reply_cut_short_is_not_trusted(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A message longer than what was received, or a dump that ends in an error: no answer (the tables are read),
    never a partial one whose missing sockets would read as answered."""
    monkeypatch.setattr(sock_diag, "_unavailable_until", 0.0)
    real_recv = socket.socket.recv

    class Short(socket.socket):
        def recv(self, n: int) -> bytes:  # type: ignore[override]
            data = real_recv(self, n)
            return data[:-8] if len(data) > 40 else data
    monkeypatch.setattr(sock_diag.socket, "socket", Short)
    with connections(2) as (port, pairs):
        keys = [k for client, _ in pairs for k in proc_keys(_peer(client))]
        assert sock_diag.states(keys, {port}) is None
    monkeypatch.setattr(sock_diag, "_unavailable_until", 0.0)


def test_the_filter_is_one_condition_per_peer() -> None:
    """cond JMP cond JMP cond: each jump lands exactly at the end (accepted), each failing condition skips its JMP."""
    peers = [(socket.AF_INET, bytes([127, 0, 0, i]), 1000 + i) for i in range(3)]
    code = sock_diag.bytecode(peers)
    assert len(code) == 3 * 16 + 2 * 4
    at = 0
    for i in range(3):
        op, yes, no = code[at], code[at + 1], int.from_bytes(code[at + 2:at + 4], "little")
        assert (op, yes, no) == (sock_diag.BC_D_COND, 16, 20)
        at += 16
        if i < 2:
            op, yes, no = code[at], code[at + 1], int.from_bytes(code[at + 2:at + 4], "little")
            assert op == sock_diag.BC_JMP and yes == 4 and at + no == len(code)
            at += 4

"""The kernel's state of a few TCP connections, asked through NETLINK_SOCK_DIAG (what ``ss`` uses).

``/proc/net/tcp`` prints every socket of the namespace for each look: about
5 µs of kernel time per socket, 100 ms at the 20,000 sockets of a
10,000-agent bench, on the path between a cut link and its verdict. A dump
filtered in the kernel by the peers' addresses (an inet_diag bytecode: one
condition per peer, OR-ed) walks the same table without printing it and
answers only the connections asked. Same fields as the table's
(``tcp_peer.Entry``): state, bytes unacknowledged, retransmissions (or,
probing a full window, the probes unanswered), timer.

Keys are the tables' own forms of the peer (``tcp_peer.proc_keys``), so
either reader answers the same question. ``states`` returns None when this
kernel or sandbox does not answer (no sock_diag, a seccomp filter): the
caller reads the tables instead.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_D_COND = 1, 8  # linux/inet_diag.h: INET_DIAG_BC_JMP, INET_DIAG_BC_D_COND (the remote end)
ALL_STATES = 0xFFFFFFFF & ~(1 << 10)  # every state but LISTEN
KEYS_PER_ASK = 64                     # conditions per request (a jump spans at most 64 KB; a dump per 64 peers)
RECV_BYTES = 1 << 16
RETRY_AFTER_S = 60.0                  # after a failure, the tables are read instead for this long

log = logging.getLogger("doctor.inspector.tcp")
_unavailable_until = 0.0

_HDR = struct.Struct("=IHHII")        # nlmsghdr
_REQ = struct.Struct("=BBBBI")        # inet_diag_req_v2 before its sockid
_MSG = struct.Struct("=BBBB")         # inet_diag_msg: family, state, timer, retrans
_ID_BYTES = 48                        # inet_diag_sockid: sport, dport, src[4], dst[4], if, cookie[2]
_AFTER_ID = struct.Struct("=IIIII")   # expires, rqueue, wqueue, uid, inode

# the kernel's TCP states, by the number both /proc's tables and sock_diag give them
STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
          "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}
Entry = tuple[str, int, int, int, int]  # (state, bytes not acknowledged, retransmissions, timer, probes unanswered)


class Twins(tuple):  # type: ignore[type-arg]
    """Several connections from one remote address and port, to several of our listening ports (grpc names a
    peer by its address alone, and the kernel may give two connections one source port): each kept, in a stable
    order, for the question asked to choose from (``tcp_peer.for_closed``, ``for_open``)."""


State = Entry | Twins  # what the tables say of one remote address and port


def add(out: dict[str, State], key: str, entry: Entry) -> None:
    """Record ``entry`` under ``key``; a second connection of the same key makes them ``Twins``."""
    old = out.get(key)
    if old is None:
        out[key] = entry
    else:
        out[key] = Twins(sorted([*(old if isinstance(old, Twins) else (old,)), entry]))


def _peer(key: str) -> tuple[int, bytes, int]:
    """(family, address as the kernel holds it, port) of a table key: 8 hex digits (IPv4) or 32 (IPv6), each
    32-bit word in this machine's order, then the port."""
    addr_hex, port_hex = key.split(":")
    words = [int(addr_hex[i:i + 8], 16) for i in range(0, len(addr_hex), 8)]
    family = socket.AF_INET if len(words) == 1 else socket.AF_INET6
    return family, struct.pack(f"={len(words)}I", *words), int(port_hex, 16)


def table_key(family: int, addr: bytes, port: int) -> str:
    """A connection's remote end as /proc's tables print it (and ``tcp_peer.proc_keys`` names peers): each 32-bit
    word of the address in this machine's order, in hex, then the port."""
    count = 1 if family == socket.AF_INET else 4
    return "".join(f"{w:08X}" for w in struct.unpack(f"={count}I", addr[:4 * count])) + f":{port:04X}"


def bytecode(peers: list[tuple[int, bytes, int]]) -> bytes:
    """Accept a socket whose remote end is one of ``peers``: cond₁ JMP cond₂ JMP … condₙ. A condition that holds
    falls through to its JMP, which jumps to the end (accepted); one that fails skips its JMP to the next
    condition; the last one failing jumps 4 bytes past the end (rejected)."""
    conds = []
    for family, addr, port in peers:
        size = 4 + 8 + len(addr)
        # inet_diag_bc_op {code, yes, no} + inet_diag_hostcond {family, prefix_len, port} + the address
        conds.append(struct.pack("=BBHBBxxi", BC_D_COND, size, size + 4, family, 8 * len(addr), port) + addr)
    out = b""
    for i, cond in enumerate(conds):
        out += cond
        if i < len(conds) - 1:
            rest = sum(len(c) + 4 for c in conds[i + 1:]) - 4  # what follows this JMP
            out += struct.pack("=BBH", BC_JMP, 4, 4 + rest)
    return out


def _request(family: int, code: bytes, seq: int) -> bytes:
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, ALL_STATES) + bytes(_ID_BYTES)
    attr = struct.pack("=HH", 4 + len(code), INET_DIAG_REQ_BYTECODE) + code
    attr += bytes(-len(attr) % 4)
    body = req + attr
    return _HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _ask(sock: socket.socket, family: int, peers: list[tuple[int, bytes, int]], seq: int,
         local_ports: set[int], out: dict[str, State]) -> None:
    sock.send(_request(family, bytecode(peers), seq))
    while True:  # bounded: the kernel ends every dump with NLMSG_DONE (or an error)
        data = sock.recv(RECV_BYTES)
        if not data:
            raise OSError(errno.EIO, "sock_diag: the kernel closed the socket")
        at = 0
        while at + _HDR.size <= len(data):
            length, kind, _flags, got_seq, _pid = _HDR.unpack_from(data, at)
            if length < _HDR.size or at + length > len(data):
                raise OSError(errno.EIO, "sock_diag: a malformed message")
            body = at + _HDR.size
            if got_seq == seq:
                if kind == NLMSG_DONE:
                    if length >= _HDR.size + 4 and struct.unpack_from("=i", data, body)[0] != 0:
                        raise OSError(errno.EIO, "sock_diag: the dump ended in an error")  # incomplete: not trusted
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, body)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                if kind == SOCK_DIAG_BY_FAMILY and length >= _HDR.size + _MSG.size + _ID_BYTES + _AFTER_ID.size:
                    fam, state, timer, retrans = _MSG.unpack_from(data, body)
                    sport, dport = struct.unpack_from("!HH", data, body + 4)
                    dst = data[body + 4 + 4 + 16:body + 4 + 4 + 32]
                    _exp, _rq, wqueue, _uid, _ino = _AFTER_ID.unpack_from(data, body + 4 + _ID_BYTES)
                    if sport in local_ports:
                        name = STATES.get(f"{state:02X}", f"{state:02X}")
                        # probing a full window (timer 4) or keeping alive (2), the kernel's count is of probes
                        # unanswered, not of retransmissions: where /proc's table shows it too
                        add(out, table_key(fam, dst, dport), (name, wqueue, 0, timer, retrans) if timer in (2, 4)
                            else (name, wqueue, retrans, timer, 0))
            at += (length + 3) & ~3


def states(keys: Iterable[str], local_ports: set[int]) -> dict[str, State] | None:
    """The state of each connection whose remote end is one of ``keys`` and whose local port is one of
    ``local_ports`` (absent: no such socket); None when sock_diag cannot be asked here."""
    by_family: dict[int, list[tuple[int, bytes, int]]] = {}
    for key in set(keys):
        try:
            family, addr, port = _peer(key)
        except ValueError:
            continue
        by_family.setdefault(family, []).append((family, addr, port))
    global _unavailable_until
    if time.monotonic() < _unavailable_until:
        return None
    out: dict[str, State] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(2.0)  # the kernel answers at once; a sandbox that swallows the request must not hang
            seq = 0
            for family, peers in by_family.items():
                for i in range(0, len(peers), KEYS_PER_ASK):
                    seq += 1
                    _ask(sock, family, peers[i:i + KEYS_PER_ASK], seq, local_ports, out)
    except (OSError, struct.error) as exc:
        # not asked again for a while: a sandbox that swallows the request would cost every look its timeout
        _unavailable_until = time.monotonic() + RETRY_AFTER_S
        log.warning("sock_diag cannot be asked (%s): the connection tables are read instead for %.0f s", exc,
                    RETRY_AFTER_S)
        return None
    return out

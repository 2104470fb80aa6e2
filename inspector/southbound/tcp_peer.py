"""Did an agent's peer answer when its stream ended? The kernel's TCP state of the connection says.

grpc.aio ends an agent's stream the same way whether the agent's process died
(its kernel closed the connection: the host is alive) or the server's HTTP/2
keepalive gave up on a peer that answers nothing (a dead host, a cut link, a
switch). The kernel tells the two apart. When the peer's kernel closed the
connection, our socket is gone at once (or in CLOSE_WAIT, LAST_ACK,
TIME_WAIT). When the keepalive gave up on an agent whose host still runs (a
frozen agent process), its kernel acknowledges our FIN within a delayed ACK:
FIN_WAIT1 for a few milliseconds, nothing else unacknowledged and nothing
retransmitted, then FIN_WAIT2. When it gave up on a peer that answers nothing,
our socket sits in FIN_WAIT1 with the keepalive's pings unacknowledged and
already retransmitted. Measured in the lab (agents over veth pairs; docs/agent.md,
"Liveness"): SIGKILL of the agent — gone; SIGSTOP — FIN_WAIT1 (1 byte queued,
0 retransmissions), FIN_WAIT2 20 ms later; link cut — FIN_WAIT1 with 138 bytes
queued and 2 retransmissions.

So: FIN_WAIT1 retransmitted twice is *silence*, the peer's silence, judged
like a heartbeat timeout (two retransmission timeouts, 600 ms at least,
without a word). Once is looked at again: a live peer's delayed ACK (up to
200 ms) can lose the race against our first retransmission timeout (200 ms),
and on an overloaded machine both kernels' timers run late (seen in a
10,000-agent connect storm: live peers' FINs unacknowledged for 300 ms and
more, nothing retransmitted yet). Still unacknowledged after the last look
(0.8 s), retransmitted: silence; never retransmitted, no evidence either way,
so the peer counts as answered. ESTABLISHED (gRPC has not closed the socket yet, or the agent
ended just its call) is looked at again too; still open at the end means the
peer is there. FIN_WAIT1 behind a full receive window (the agent stopped
reading) is judged by the window probes instead: answered, the agent's death;
two unanswered, silence. Anything else is the agent's death, as before. (So the kernel
must not destroy a silent peer's connection on its own first: the server's
TCP_USER_TIMEOUT outlasts the keepalive and these looks, ``server_options``.) Unix-socket
agents (local) and sockets this process cannot find count as answered: no
evidence of silence.

A close found unanswered while this inspector was behind is not trusted as
it stands (its own stall's evidence, perhaps); once it is on time again, the
socket is looked at afresh (``silent_afresh``): something our kernel sent
after a look made on time, left unanswered longer than any delayed ACK (or
until the next retransmission), with the inspector on time throughout, is
silence; the peer answering (the socket leaving FIN_WAIT1, the count
dropping, below the close's own look too) is the agent's death; neither
within the time given, no verdict (the silence limit decides, as before).

A stream still open whose agent has been silent past the silence limit is
asked too (``judge_open``): unacknowledged and retransmitted, the peer is
silent; its kernel answering, the host lives (a wedged agent, or this
inspector behind in reading it: its own stall must never be a host's
silence) and its agent is down; no socket found, undecided for another
silence limit, then its agent is down too (no evidence of the peer's
silence: an alarm, never a fence).

The kernel is asked through NETLINK_SOCK_DIAG (``sock_diag.py``: only the
connections asked, filtered in the kernel), or, where that cannot be asked,
the connection tables are read from ``/proc/net/tcp`` and ``/proc/net/tcp6``
(each whole, by one call of the C library: ``_text``; and searched for the
connections asked, not split line by line). Either in a worker thread, once
for every stream that ended within the same few milliseconds, so a thousand
streams ending together cost one question.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator

from inspector.southbound import sock_diag
from inspector.southbound.sock_diag import STATES, Entry, State, Twins, add, table_key

log = logging.getLogger("doctor.inspector.tcp")

# an undecided socket is looked at again after these, 0.8 s in all (a delayed ACK takes ≤ 200 ms, a second
# retransmission comes 600 ms after the first send): often at first, so a second retransmission that comes after
# the close is seen within 50 ms of it (a look costs the kernel a few ms through sock_diag)
LOOKS_S = (0.05, 0.05, 0.05, 0.05, 0.1, 0.1, 0.2, 0.2)
PROBE_LOOKS_S = (0.5, 1.0)  # and, behind a full window, after these: window probes back off from 200 ms
AFRESH_LOOK_S = 0.1       # a close judged afresh is looked at this often
AFRESH_CONFIRM_S = 0.3    # and what was sent after a look on time must stay unanswered this long (a delayed ACK
#                           takes ≤ 200 ms)
AFRESH_MAX_S = 10.0       # a close is judged afresh within this long of its end: well within the TCP_USER_TIMEOUT
#                           that keeps a silent peer's socket (20 s at least, doctor_common/grpcutil.py)
CLOSED_KEPT = 4096        # the closes' last looks kept for a second look (the newest)
COALESCE_S = 0.0          # streams ending in the same turn of the loop share one read (no wait: the kernel keeps
#                           a silent peer's socket only until its TCP_USER_TIMEOUT, doctor_common/grpcutil.py)
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def proc_keys(peer: str) -> tuple[str, ...]:
    """The remote-address forms ``peer`` (grpc's ``context.peer()``) takes in /proc/net/tcp{,6}; () when it is
    not a TCP peer (a unix socket) or cannot be parsed."""
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)  # grpc percent-encodes an IPv6 peer: ipv6:%5B::1%5D:33914
    if kind not in ("ipv4", "ipv6"):
        return ()
    host, _, port_text = rest.rpartition(":")
    try:
        port = int(port_text)
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        mapped = b"\0" * 10 + b"\xff\xff" + addr.packed
        return table_key(socket.AF_INET, addr.packed, port), table_key(socket.AF_INET6, mapped, port)
    return (table_key(socket.AF_INET6, addr.packed, port),)


ZERO_WINDOW_PROBE = 4  # /proc/net/tcp's "tr": the peer's receive window was full, its window is being probed


READ_CHUNK = 1 << 20  # bytes asked of the C library at a time (a table of 10,000 connections is 1.5 MB)
FIND_KEYS_MAX = 64    # up to this many connections asked together are found by searching the text for each


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        libc.fread.restype = ctypes.c_size_t
        libc.fread.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
        libc.ferror.argtypes = libc.fclose.argtypes = [ctypes.c_void_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def _text(table: str) -> bytes | None:
    """A table's whole text, or None when it cannot be read.

    Through the C library's ``fread``: the kernel hands a /proc table over one page (27 connections) per read,
    and Python's own reads give the GIL away around each one; beside an event loop busy in Python, each took a
    switch interval (5 ms) to get it back. Measured at 27,000 sockets with a thread busy in Python: 5.3 s by
    ``os.read``, 0.11 s by ``fread`` (one call, one release)."""
    if _LIBC is None:
        try:
            with open(table, "rb") as f:
                return f.read()
        except OSError:
            return None
    buf = ctypes.create_string_buffer(READ_CHUNK)
    for _ in range(3):  # a signal landing in a read fails it (EINTR): read again, a few times at most
        f = _LIBC.fopen(table.encode(), b"rb")
        if not f:
            return None
        try:
            chunks = []
            while True:  # bounded: the table ends
                n = _LIBC.fread(buf, 1, READ_CHUNK, f)
                chunks.append(ctypes.string_at(buf, n))
                if n < READ_CHUNK:
                    break
            if not _LIBC.ferror(f):
                return b"".join(chunks)
        finally:
            _LIBC.fclose(f)
    return None


def _rows(tables: tuple[str, ...], keys: Iterable[str] | None = None) -> Iterator[list[str]]:
    """Each socket's fields (split as far as the inode) in the tables that can be read; an unreadable one is
    skipped. With ``keys``, only the lines holding one of them (found by a search of the text, not a split of
    every line: a table of 10,000 connections is 1.5 MB)."""
    for table in tables:
        text = _text(table)
        if text is None:
            continue
        if keys is None:
            lines: Iterable[bytes] = text.split(b"\n")[1:]  # after the header
        else:
            lines = _lines_with(text, [f" {key} ".encode() for key in keys])
        for line in lines:
            if line:
                yield line.decode("ascii", "replace").split(None, 9)


def _lines_with(text: bytes, needles: list[bytes]) -> Iterator[bytes]:
    for needle in needles:
        at = text.find(needle)
        while at >= 0:  # bounded: each search starts past the last hit
            start = text.rfind(b"\n", 0, at) + 1
            end = text.find(b"\n", at)
            end = len(text) if end < 0 else end
            yield text[start:end]
            at = text.find(needle, end)


def _local_port(fields: list[str]) -> int:
    return int(fields[1].rsplit(":", 1)[1], 16)


def read_states(keys: Iterable[str], local_ports: set[int], tables: tuple[str, ...] = TABLES) -> dict[str, State]:
    """The TCP state of each connection whose remote address is one of ``keys`` and whose local port is one of
    ``local_ports`` (a key absent from the answer: no such socket; several connections: ``Twins``)."""
    wanted = set(keys)
    out: dict[str, State] = {}
    for fields in _rows(tables, wanted if len(wanted) <= FIND_KEYS_MAX else None):
        if len(fields) < 9 or fields[2] not in wanted or _local_port(fields) not in local_ports:
            continue  # the key was another column (a local address), or another listener's connection
        tx = int(fields[4].split(":", 1)[0], 16)
        timer = int(fields[5].split(":", 1)[0], 16)
        add(out, fields[2], (STATES.get(fields[3], fields[3]), tx, int(fields[6], 16), timer,
                             int(fields[8])))  # icsk_probes_out, zeroed by any answer
    return out


def connection_states(keys: Iterable[str], local_ports: set[int]) -> dict[str, State]:
    """``read_states`` through sock_diag (the kernel answers only the connections asked: ``sock_diag.py``), or
    from the tables where it cannot be asked."""
    keys = list(keys)
    found = sock_diag.states(keys, local_ports)
    return found if found is not None else read_states(keys, local_ports)


def listening(ports: set[int], tables: tuple[str, ...] = TABLES) -> bool:
    """Do the connection tables show a listening socket on one of ``ports``? Not when /proc is masked or shows
    another network namespace: then nothing here can be read about this process's connections."""
    try:
        return any(len(fields) >= 4 and fields[3] == "0A" and _local_port(fields) in ports
                   for fields in _rows(tables))
    except ValueError:  # a table this code cannot parse is one it cannot trust either
        return False


def judge(entry: Entry | None) -> bool | None:
    """True: the peer is silent; False: its kernel answered; None: look again."""
    if entry is None:
        return False
    state, unacknowledged, retransmissions, timer, probes = entry
    if state == "FIN_WAIT1" and timer == ZERO_WINDOW_PROBE:
        # our FIN waits behind data the peer had no room for (its agent stopped reading: frozen or wedged). A
        # live host's kernel answers each window probe (the count drops to 0); two unanswered: silent
        return True if probes >= 2 else None
    if state == "FIN_WAIT1":
        # retransmitted twice: unanswered for two retransmission timeouts. Unacknowledged bytes alone are not
        # enough, nor one retransmission: a live peer may hold its ACK for a delayed-ACK time (up to 200 ms), as
        # long as our first retransmission timeout — look again
        return True if retransmissions >= 2 else None
    if state == "ESTABLISHED":
        return None  # gRPC has not closed it yet, or the agent ended just its call: the last look tells
    return False


def judge_open(entry: Entry | None) -> bool | None:
    """A connection still open whose agent has said nothing for longer than the silence limit. True: its peer's
    kernel is silent too (what we sent is unacknowledged and already retransmitted, or two window probes went
    unanswered); False: the kernel acknowledged everything we sent — proof of life only once the keepalive
    has sent something since the silence began (``Liveness`` waits for its full turn); None: undecided yet.

    Closed already, though this inspector has not yet read the stream's end (seen at 10,000 agents): judged as a
    close (``judge``). No socket at all is undecided here, not "answered": the stream's end may simply not be
    read yet (``Liveness`` asks again for a while, then counts the agent down)."""
    if entry is None:
        return None
    if entry[0] != "ESTABLISHED":
        return judge(entry)
    _state, unacknowledged, retransmissions, timer, probes = entry
    if timer == ZERO_WINDOW_PROBE:
        return True if probes >= 2 else None
    if unacknowledged:
        # retransmitted twice: unanswered for two retransmission timeouts; not yet: a delayed ACK may still come
        return True if retransmissions >= 2 else None
    return False


def _retransmissions(entry: Entry) -> int:
    return entry[2]


def _unanswered(entry: Entry) -> int:
    """What our kernel has sent the peer without an answer: window probes behind a full window, else
    retransmissions (both drop to 0 when the peer answers)."""
    return entry[4] if entry[3] == ZERO_WINDOW_PROBE else entry[2]


def _closing(twins: Twins) -> list[Entry]:
    return [e for e in twins if e[0] != "ESTABLISHED"]


def for_closed(state: State | None) -> Entry | None:
    """The socket of a stream that ended, among twins: not an ESTABLISHED one (that is another connection, and an
    idle one shows nothing either way); of several closing, the one the peer answered most (an answer anywhere is
    its kernel speaking). Only ESTABLISHED twins: ours is gone, as when it has no twin."""
    if not isinstance(state, Twins):
        return state
    closing = _closing(state)
    return min(closing, key=_unanswered) if closing else None


def for_open(state: State | None) -> Entry | None:
    """The socket of a stream still open, among twins: an ESTABLISHED one, the one the peer answered most (a
    dead twin must not make a live peer look silent); with none established, as ``for_closed``."""
    if not isinstance(state, Twins):
        return state
    established = [e for e in state if e[0] == "ESTABLISHED"]
    return min(established, key=_unanswered) if established else for_closed(state)


def _behind_full_window(entry: Entry | None) -> bool:
    return entry is not None and entry[0] == "FIN_WAIT1" and entry[3] == ZERO_WINDOW_PROBE


class PeerSilence:
    """``await silent(peer)``: True when the connection to ``peer`` ended without a word from the peer's kernel."""

    def __init__(self, local_ports: Callable[[], set[int]]) -> None:
        self.local_ports = local_ports
        self._pending: dict[str, asyncio.Future[Entry | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed: dict[str, Entry | None] = {}  # peer -> the last look at its close judged silent

    async def silent(self, peer: str) -> bool:
        keys = proc_keys(peer)
        if not keys:
            return False
        entry = for_closed(await self._state(keys))
        looks, probing = list(LOOKS_S), False
        verdict = judge(entry)
        while verdict is None and looks:  # bounded: a verdict, or the last look decides
            await asyncio.sleep(looks.pop(0))
            entry = for_closed(await self._state(keys))
            verdict = judge(entry)
            if verdict is None and not looks and not probing and _behind_full_window(entry):
                looks, probing = list(PROBE_LOOKS_S), True  # probes back off: give them time to go unanswered
        if verdict is None:
            # still unacknowledged after the looks: silent if our kernel retransmitted meanwhile; never
            # retransmitted (timers running late on an overloaded machine), or behind a full window with no
            # second probe unanswered: no evidence of silence (the safe side: an agent's death is never fenced)
            verdict = (entry is not None and entry[0] == "FIN_WAIT1" and not _behind_full_window(entry)
                       and _retransmissions(entry) >= 1)
        log.info("the connection of %s ended %s (%s)", peer, "unanswered: its peer is silent" if verdict
                 else "answered: its peer's kernel spoke", entry)
        if verdict:  # kept for a second look (``silent_afresh``), should this inspector have been behind
            self._closed.pop(peer, None)
            self._closed[peer] = entry
            while len(self._closed) > CLOSED_KEPT:
                del self._closed[next(iter(self._closed))]
        return verdict

    async def silent_afresh(self, peer: str, on_time: Callable[[], bool], within_s: float,
                            gone: Callable[[], bool] = lambda: False) -> bool | None:
        """A connection that ended unanswered while this inspector was behind, looked at again now that it is on
        time (``on_time()``, asked around every look).

        True: something our kernel sent after a look made on time (a retransmission, a window probe) went
        unanswered for ``AFRESH_CONFIRM_S`` — longer than a live peer's delayed ACK — or long enough for the next
        one to follow it, with the inspector on time throughout. False: the peer's kernel answered (the socket
        left FIN_WAIT1, or what was unanswered dropped, compared with the close's own look too). None: neither
        within ``within_s`` (at most ``AFRESH_MAX_S``), never on time, or ``gone()`` (the host is back)."""
        keys = proc_keys(peer)
        if not keys:
            return False
        closed = self._closed.pop(peer, None)  # what the close's verdict saw: a lower count since is an answer
        deadline = time.monotonic() + min(within_s, AFRESH_MAX_S)
        base: Entry | None = None     # the last look made on time: what is fresh is counted from it
        rose_at: float | None = None  # when a look on time first saw one more unanswered than ``base``
        verdict: bool | None = None
        entry = previous = None
        while not gone():  # bounded by the deadline
            trusted = on_time()
            state = await self._state(keys)
            trusted = trusted and on_time()
            now = time.monotonic()
            if isinstance(state, Twins) and len(_closing(state)) > 1:
                # several closing connections of one peer: their counts cannot be compared look to look (which
                # is which?), and this look is only ever a reason to fence: nothing new to judge by
                entry = None
                break
            entry = for_closed(state)
            if entry is None or entry[0] != "FIN_WAIT1":
                verdict = False  # acknowledged (gone, FIN_WAIT2, TIME_WAIT...): its kernel spoke
                break
            if any(ref is not None and ref[0] == "FIN_WAIT1" and ref[3] == entry[3]
                   and _unanswered(entry) < _unanswered(ref) for ref in (closed, base, previous)):
                verdict = False  # the peer answered something: the count restarted
                break
            previous = entry
            if not trusted or base is None or base[3] != entry[3]:
                base, rose_at = (entry if trusted else None), None
            else:
                rise = _unanswered(entry) - _unanswered(base)
                if rise >= 2:
                    verdict = True  # one sent after the base went unanswered until the next was sent
                    break
                if rise == 1:
                    rose_at = now if rose_at is None else rose_at
                    if now - rose_at >= AFRESH_CONFIRM_S:
                        verdict = True  # sent after the base, unanswered for longer than any delayed ACK
                        break
            if now + AFRESH_LOOK_S > deadline:
                break
            await asyncio.sleep(AFRESH_LOOK_S)
        log.info("the connection of %s, looked at again with this inspector on time: %s (%s)", peer,
                 {True: "still unanswered: its peer is silent", False: "answered: its peer's kernel spoke",
                  None: "nothing new to judge by"}[verdict], entry)
        return verdict

    async def open_silent(self, peer: str) -> bool | None:
        """For a stream still open whose agent fell silent: is its peer's kernel silent too (``judge_open``)?
        One look: thousands of streams asked together cost one read of the tables."""
        keys = proc_keys(peer)
        if not keys:
            return None
        entry = for_open(await self._state(keys))
        verdict = judge_open(entry)
        log.debug("the open connection of %s: %s (%s)", peer, {True: "unanswered: its peer is silent",
                                                             False: "answered: its peer's kernel speaks",
                                                             None: "undecided"}[verdict], entry)
        return verdict

    async def _state(self, keys: tuple[str, ...]) -> State | None:
        loop = asyncio.get_running_loop()
        futures = []
        for key in keys:
            fut = self._pending.get(key)
            if fut is None:
                fut = self._pending[key] = loop.create_future()
            futures.append(fut)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="tcp states")
        states = await asyncio.gather(*futures)
        return next((s for s in states if s is not None), None)

    async def _read(self) -> None:
        while self._pending:  # bounded: each pass answers what was asked before it began
            await asyncio.sleep(COALESCE_S)
            pending, self._pending = self._pending, {}
            try:
                found = await asyncio.to_thread(connection_states, list(pending), self.local_ports())
            except Exception as exc:  # noqa: BLE001 - no evidence either way: not silent
                log.warning("cannot read the TCP connection tables: %s", exc)
                found = {}
            for key, fut in pending.items():
                if not fut.done():
                    fut.set_result(found.get(key))

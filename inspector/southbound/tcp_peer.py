"""Did an agent's peer answer when its stream ended? The kernel's TCP state of the connection says.

grpc.aio ends an agent's stream the same way whether the agent's process died
(its kernel closed the connection: the host is alive) or the server's HTTP/2
keepalive gave up on a peer that answers nothing (a dead host, a cut link, a
switch). The kernel tells the two apart. When the peer's kernel closed the
connection, or answers our FIN, our socket is gone at once (or in CLOSE_WAIT,
LAST_ACK, TIME_WAIT, FIN_WAIT2). When the keepalive gave up, gRPC closes a
socket whose peer acknowledges nothing: our FIN stays unacknowledged and the
socket sits in FIN_WAIT1, retransmitting. Measured on this machine (a grpclib
client in a network namespace; docs/agent.md, "Liveness"): SIGKILL of the
client — the socket was gone when the stream ended; its veth link set down —
FIN_WAIT1 when the stream ended and 100 ms later.

So a stream that ended in FIN_WAIT1 is *silence*, the peer's silence, judged
like a heartbeat timeout; anything else is the agent's death, as before. A
stream whose socket is still ESTABLISHED (the agent ended the call, or gRPC
has not closed the socket yet) is looked at twice more, 20 and 100 ms later;
still open means the peer is there. Unix-socket agents (local) and sockets
this process cannot find count as answered: no evidence of silence.

The connection tables are read from ``/proc/net/tcp`` and ``/proc/net/tcp6``
in a worker thread, once for every stream that ended within the same few
milliseconds, so a thousand streams ending together cost one read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable

log = logging.getLogger("doctor.inspector.tcp")

STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
          "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}
SILENT = "FIN_WAIT1"
RECHECK_S = (0.02, 0.1)   # an ESTABLISHED socket is looked at again after these
COALESCE_S = 0.005        # streams ending this close together share one read of the tables
TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def proc_keys(peer: str) -> tuple[str, ...]:
    """The remote-address forms ``peer`` (grpc's ``context.peer()``) takes in /proc/net/tcp{,6}; () when it is
    not a TCP peer (a unix socket) or cannot be parsed."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ()
    host, _, port_text = rest.rpartition(":")
    try:
        port = int(port_text)
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return ()
    keys = []
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        keys.append(f"{struct.unpack('=I', addr.packed)[0]:08X}:{port:04X}")
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + addr.packed)
        keys.append(_v6(mapped, port))
    else:
        keys.append(_v6(addr, port))
    return tuple(keys)


def _v6(addr: ipaddress.IPv6Address, port: int) -> str:
    return "".join(f"{w:08X}" for w in struct.unpack("=4I", addr.packed)) + f":{port:04X}"


def read_states(keys: Iterable[str], local_ports: set[int], tables: tuple[str, ...] = TABLES) -> dict[str, str]:
    """The TCP state of each connection whose remote address is one of ``keys`` and whose local port is one of
    ``local_ports`` (a key absent from the answer: no such socket)."""
    wanted = set(keys)
    out: dict[str, str] = {}
    for table in tables:
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) < 4 or fields[2] not in wanted:
                        continue
                    if int(fields[1].rsplit(":", 1)[1], 16) in local_ports:
                        out[fields[2]] = STATES.get(fields[3], fields[3])
        except OSError:
            continue
    return out


class PeerSilence:
    """``await silent(peer)``: True when the connection to ``peer`` ended without a word from the peer's kernel."""

    def __init__(self, local_ports: Callable[[], set[int]]) -> None:
        self.local_ports = local_ports
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def silent(self, peer: str) -> bool:
        keys = proc_keys(peer)
        if not keys:
            return False
        state = await self._state(keys)
        for delay in RECHECK_S:
            if state != "ESTABLISHED":
                break
            await asyncio.sleep(delay)
            state = await self._state(keys)
        if state == SILENT:
            log.info("the connection of %s ended unanswered (%s): its peer is silent", peer, state)
        return state == SILENT

    async def _state(self, keys: tuple[str, ...]) -> str | None:
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
                found = await asyncio.to_thread(read_states, list(pending), self.local_ports())
            except Exception as exc:  # noqa: BLE001 - no evidence either way: not silent
                log.warning("cannot read the TCP connection tables: %s", exc)
                found = {}
            for key, fut in pending.items():
                if not fut.done():
                    fut.set_result(found.get(key))

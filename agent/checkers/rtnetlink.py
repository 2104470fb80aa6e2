"""Link state over rtnetlink (rtnetlink(7)): the few bytes the ``nic`` checker needs, decoded with ``struct``.

pyroute2 decodes every netlink family, and importing any part of it loads all
of them (164 modules, 11.5 MB of RSS measured on the agent). The agent needs
one message type (RTM_NEWLINK/RTM_DELLINK) and three of its attributes, so it
reads them itself; pyroute2 stays the tool for changing links (lab, tests).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTMGRP_LINK = 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST = 0x1
IFLA_IFNAME, IFLA_OPERSTATE, IFLA_CARRIER = 3, 16, 33
IFF_UP = 0x1
# RFC 2863 operational states, as the kernel numbers them (IF_OPER_*)
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_NLMSGHDR = struct.Struct("=IHHII")    # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
_RTATTR = struct.Struct("=HH")         # length, type
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Link:
    """One link message: the kernel's view of ``ifname`` (``deleted`` for RTM_DELLINK)."""

    ifname: str
    index: int
    flags: int
    operstate: str
    carrier: int | None
    deleted: bool = False
    sequence: int = 0  # the request's sequence for an answer, 0 for a multicast event


@dataclass(frozen=True)
class Error:
    """A negative answer to a request (``errno`` 19, ENODEV: no such link)."""

    errno: int
    sequence: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def decode(data: bytes) -> Iterator[Link | Error]:
    """Every link message and error in one datagram; other types (NLMSG_DONE, ...) are skipped."""
    view = memoryview(data)
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            return  # truncated: the reconciliation will read the link again
        body = offset + _NLMSGHDR.size
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= _NLMSGHDR.size + _IFINFOMSG.size:
            _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(view, body)
            attrs = _attributes(view, body + _IFINFOMSG.size, offset + length)
            name = bytes(attrs.get(IFLA_IFNAME, b"")).split(b"\0", 1)[0].decode(errors="replace")
            oper = attrs.get(IFLA_OPERSTATE)
            state = OPERSTATES[oper[0]] if oper is not None and oper[0] < len(OPERSTATES) else "UNKNOWN"
            carrier = attrs.get(IFLA_CARRIER)
            yield Link(name, index, flags, state, carrier[0] if carrier is not None else None,
                       deleted=kind == RTM_DELLINK, sequence=seq)
        elif kind == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            (code,) = struct.unpack_from("=i", view, body)
            if code:
                yield Error(-code, seq)
        offset += _align(length)


def _attributes(view: memoryview, start: int, end: int) -> dict[int, memoryview]:
    found: dict[int, memoryview] = {}
    offset = start
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(view, offset)
        if length < _RTATTR.size or offset + length > end:
            break
        if kind in (IFLA_IFNAME, IFLA_OPERSTATE, IFLA_CARRIER):
            found[kind] = view[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return found


def get_link_request(ifname: str, sequence: int) -> bytes:
    """RTM_GETLINK for one link by name: answered by its RTM_NEWLINK, or an ENODEV error."""
    name = ifname.encode() + b"\0"
    attr = _RTATTR.pack(_RTATTR.size + len(name), IFLA_IFNAME) + name
    attr += b"\0" * (_align(len(attr)) - len(attr))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, sequence, 0) + body


def open_socket(groups: int = RTMGRP_LINK, netns: str | None = None, rcvbuf: int = 1 << 20) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to ``groups``, in ``netns`` when given."""
    if netns is None:
        return _socket(groups, rcvbuf)
    result: list[socket.socket | BaseException] = []

    def in_namespace() -> None:  # setns moves only this thread; the socket stays in the namespace
        try:
            with open(f"/run/netns/{netns}", "rb") as ns:
                _setns(ns.fileno())
            result.append(_socket(groups, rcvbuf))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.append(exc)

    worker = threading.Thread(target=in_namespace, name="doctor-netns", daemon=True)
    worker.start()
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _socket(groups: int, rcvbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, groups))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # only for a namespaced nic checker on Python 3.11

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")

"""The rtnetlink decoder against the kernel's own answers (no root needed: reading links is unprivileged)."""

from __future__ import annotations

import errno
import select
import socket

from agent.checkers import rtnetlink

BUFFER = 1 << 16


def ask(sock: socket.socket, ifname: str, seq: int) -> list[rtnetlink.Link | rtnetlink.Error]:
    sock.send(rtnetlink.get_link_request(ifname, seq))
    for _ in range(10):  # bounded: the answer is queued synchronously by the kernel
        ready, _, _ = select.select([sock], [], [], 5.0)
        assert ready, "the kernel did not answer"
        found = [m for m in rtnetlink.decode(sock.recv(BUFFER)) if m.sequence == seq]
        if found:
            return found
    raise AssertionError(f"no answer with sequence {seq}")


def test_loopback_is_decoded_from_the_kernels_answer() -> None:
    sock = rtnetlink.open_socket(groups=0)
    try:
        (link,) = ask(sock, "lo", 7)
    finally:
        sock.close()
    assert isinstance(link, rtnetlink.Link)
    assert link.ifname == "lo" and link.index == socket.if_nametoindex("lo")
    assert link.flags & rtnetlink.IFF_UP and not link.deleted
    assert link.operstate in rtnetlink.OPERSTATES and link.sequence == 7


def test_a_missing_link_is_enodev() -> None:
    sock = rtnetlink.open_socket(groups=0)
    try:
        (answer,) = ask(sock, "doctor-none0", 8)
    finally:
        sock.close()
    assert answer == rtnetlink.Error(errno.ENODEV, 8)


def test_truncated_and_foreign_messages_are_skipped_not_fatal() -> None:
    sock = rtnetlink.open_socket(groups=0)
    try:
        sock.send(rtnetlink.get_link_request("lo", 9))
        select.select([sock], [], [], 5.0)
        whole = sock.recv(BUFFER)
    finally:
        sock.close()
    assert [m.ifname for m in rtnetlink.decode(whole) if isinstance(m, rtnetlink.Link)] == ["lo"]
    for cut in (3, 16, 20, 40, len(whole) - 1):  # the header's length no longer fits: nothing, and no error
        assert list(rtnetlink.decode(whole[:cut])) == []
    done = rtnetlink._NLMSGHDR.pack(20, rtnetlink.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    assert list(rtnetlink.decode(done + whole)) == list(rtnetlink.decode(whole))

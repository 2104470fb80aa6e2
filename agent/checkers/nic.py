"""``nic``: link state of the configured interfaces from kernel netlink events (no polling).

A link counts as up when the kernel says its operational state is UP (carrier
present and administratively up). Every ``reconcile_s`` the checker asks the
kernel for each watched link again, in case a netlink datagram was dropped
(ENOBUFS under a burst, which also triggers an immediate re-read).

An interface the host never had since the agent started is a configuration
problem, not a NIC fault: it is reported as ``compute.host.agent.misconfigured``
(a warning for administrators; nothing is fenced for it), and
``doctor-agent --check-config`` refuses it. An interface seen and then gone is
a fault like a link down.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator

from agent.checkers import rtnetlink
from agent.checkers.base import Reading, Status
from doctor_common.api import common_pb2
from doctor_common.config import Section
from doctor_common.timeline import now_ns

log = logging.getLogger("doctor.agent.nic")

FAULT_TYPE = "compute.host.nic.down"
MISCONFIGURED = "compute.host.agent.misconfigured"
RECV_BYTES = 1 << 16  # a link message with every attribute is ~1.5 KB; the kernel batches several


class NicChecker:
    name = "nic"

    def __init__(self, interfaces: list[str], netns: str | None = None, reconcile_s: float = 5.0) -> None:
        if not interfaces:
            raise ValueError("nic checker needs at least one interface")
        self.interfaces = list(interfaces)
        self.netns = netns
        self.reconcile_s = reconcile_s
        self._sequence = itertools.count(1)
        self._seen: set[str] = set()  # interfaces present at some point since the agent started

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "NicChecker":
        interfaces = cfg.str_list("interfaces")
        if not interfaces:
            raise cfg.error("interfaces", "list at least one interface to watch")
        checker = cls(interfaces, netns=cfg.str("netns", None), reconcile_s=cfg.float("reconcile_s", 5.0, min=0.1))
        cfg.done()
        return checker

    def check_host(self) -> list[tuple[str, str]]:
        """``--check-config``: (key, problem) for every configured interface this host does not have."""
        where = f" in network namespace {self.netns}" if self.netns else ""
        try:
            present = present_interfaces(self.interfaces, self.netns)
        except OSError as exc:  # a timeout, a namespace that does not exist
            return [("interfaces", f"cannot ask the kernel for its interfaces{where}: {exc or type(exc).__name__}")]
        return [("interfaces", f"interface {i!r} does not exist on this host{where} (a typo?)")
                for i in self.interfaces if i not in present]

    def _reading(self, ifname: str, link: rtnetlink.Link | None, observed_ns: int) -> Reading:
        component = f"nic:{ifname}"
        if (link is None or link.deleted) and ifname not in self._seen:
            return Reading(component, Status.WARNING, MISCONFIGURED, common_pb2.SEVERITY_WARNING,
                           f"interface {ifname} does not exist on this host (never seen since the agent started): "
                           "check [checkers.nic] interfaces", {"interface": ifname, "operstate": "ABSENT"},
                           observed_ns)
        self._seen.add(ifname)
        if link is None or link.deleted:
            return Reading(component, Status.FAULT, FAULT_TYPE, common_pb2.SEVERITY_CRITICAL,
                           f"{ifname} is absent", {"interface": ifname, "operstate": "ABSENT"}, observed_ns)
        if link.operstate == "UP":
            return Reading(component, Status.OK, details={"interface": ifname, "operstate": link.operstate},
                           observed_ns=observed_ns)
        return Reading(component, Status.FAULT, FAULT_TYPE, common_pb2.SEVERITY_CRITICAL,
                       f"{ifname} is {link.operstate.lower()}",
                       {"interface": ifname, "operstate": link.operstate,
                        "carrier": str(link.carrier) if link.carrier is not None else ""}, observed_ns)

    def _ask(self, sock: socket.socket, asked: dict[int, str]) -> None:
        """Request every watched link (answers come in order with the events on the same socket).

        Earlier questions are forgotten: their answers may have been dropped with the events (ENOBUFS); a
        late answer to one is still a valid link message, and a late "no such link" is ignored."""
        asked.clear()
        for ifname in self.interfaces:
            seq = next(self._sequence)
            try:
                sock.send(rtnetlink.get_link_request(ifname, seq))
            except BlockingIOError:
                return  # the kernel's queue is full: the next reconciliation asks again
            asked[seq] = ifname

    async def watch(self) -> AsyncIterator[Reading]:
        sock = rtnetlink.open_socket(rtnetlink.RTMGRP_LINK, self.netns)
        loop = asyncio.get_running_loop()
        asked: dict[int, str] = {}  # request sequence -> link name
        try:
            self._ask(sock, asked)
            next_reconcile = loop.time() + self.reconcile_s
            while True:
                try:
                    async with asyncio.timeout_at(next_reconcile):
                        data = await loop.sock_recv(sock, RECV_BYTES)
                except TimeoutError:
                    next_reconcile = loop.time() + self.reconcile_s
                    self._ask(sock, asked)
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    log.warning("netlink events were dropped (ENOBUFS): reading every watched link again")
                    self._ask(sock, asked)
                    continue
                observed = now_ns()
                for msg in rtnetlink.decode(data):
                    if isinstance(msg, rtnetlink.Error):
                        ifname = asked.pop(msg.sequence, None)
                        if ifname is not None and msg.errno == errno.ENODEV:
                            yield self._reading(ifname, None, observed)
                        elif ifname is not None:
                            log.warning("reading link %s failed: %s", ifname, os.strerror(msg.errno))
                        continue
                    asked.pop(msg.sequence, None)
                    if msg.ifname in self.interfaces:
                        yield self._reading(msg.ifname, msg, observed)
        finally:
            sock.close()


def present_interfaces(names: list[str], netns: str | None = None, timeout_s: float = 2.0) -> set[str]:
    """Which of ``names`` the kernel has (in ``netns``), asked once over rtnetlink."""
    sock = rtnetlink.open_socket(0, netns)
    try:
        sock.setblocking(True)
        sock.settimeout(timeout_s)
        asked = {}
        for seq, name in enumerate(names, 1):
            sock.send(rtnetlink.get_link_request(name, seq))
            asked[seq] = name
        found: set[str] = set()
        while asked:
            for msg in rtnetlink.decode(sock.recv(RECV_BYTES)):
                name = asked.pop(msg.sequence, None)  # an Error (ENODEV): not present
                if isinstance(msg, rtnetlink.Link) and name is not None:
                    found.add(name)
        return found
    finally:
        sock.close()

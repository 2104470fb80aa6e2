"""``nic``: link state of the configured interfaces from kernel netlink events (no polling).

A link counts as up when the kernel says its operational state is UP (carrier
present and administratively up). A slow reconciliation dump re-reads every
link in case a netlink datagram was dropped (ENOBUFS under a burst).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from agent.checkers.base import Reading, Status
from doctor_common.api import common_pb2
from doctor_common.config import Section
from doctor_common.timeline import now_ns

log = logging.getLogger("doctor.agent.nic")

FAULT_TYPE = "compute.host.nic.down"
RTM_NEWLINK, RTM_DELLINK = 16, 17


class NicChecker:
    name = "nic"

    def __init__(self, interfaces: list[str], netns: str | None = None, reconcile_s: float = 5.0) -> None:
        if not interfaces:
            raise ValueError("nic checker needs at least one interface")
        self.interfaces = list(interfaces)
        self.netns = netns
        self.reconcile_s = reconcile_s

    @classmethod
    def from_config(cls, cfg: Section, host_id: str) -> "NicChecker":
        interfaces = cfg.str_list("interfaces")
        if not interfaces:
            raise cfg.error("interfaces", "list at least one interface to watch")
        checker = cls(interfaces, netns=cfg.str("netns", None), reconcile_s=cfg.float("reconcile_s", 5.0, min=0.1))
        cfg.done()
        return checker

    def _reading(self, ifname: str, msg: Any | None, observed_ns: int) -> Reading:
        component = f"nic:{ifname}"
        if msg is None or msg.get("header", {}).get("type") == RTM_DELLINK:
            return Reading(component, Status.FAULT, FAULT_TYPE, common_pb2.SEVERITY_CRITICAL,
                           f"{ifname} is absent", {"interface": ifname, "operstate": "ABSENT"}, observed_ns)
        oper = msg.get("operstate") or "UNKNOWN"
        if oper == "UP":
            return Reading(component, Status.OK, details={"interface": ifname, "operstate": oper},
                           observed_ns=observed_ns)
        carrier = msg.get("carrier")
        return Reading(component, Status.FAULT, FAULT_TYPE, common_pb2.SEVERITY_CRITICAL,
                       f"{ifname} is {oper.lower()}", {"interface": ifname, "operstate": oper,
                                                       "carrier": str(carrier) if carrier is not None else ""},
                       observed_ns)

    async def _dump(self, ipr: AsyncIPRoute) -> dict[str, Any]:
        found: dict[str, Any] = {}
        async for msg in await ipr.link("dump"):
            name = msg.get("ifname")
            if name in self.interfaces:
                found[name] = msg
        return found

    async def watch(self) -> AsyncIterator[Reading]:
        events = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
        queries = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
        try:
            await events.bind(groups=RTMGRP_LINK)
            now = now_ns()
            found = await self._dump(queries)
            for ifname in self.interfaces:
                yield self._reading(ifname, found.get(ifname), now)
            queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

            async def listen() -> None:
                while True:  # get() ends after each netlink datagram
                    async for msg in events.get():
                        queue.put_nowait((now_ns(), msg))

            async def reconcile() -> None:
                while True:
                    await asyncio.sleep(self.reconcile_s)
                    stamp = now_ns()
                    for ifname, msg in (await self._dump(queries)).items():
                        queue.put_nowait((stamp, msg))
                    for ifname in set(self.interfaces) - set(found):
                        queue.put_nowait((stamp, {"ifname": ifname, "header": {"type": RTM_DELLINK}}))

            tasks = [asyncio.create_task(listen()), asyncio.create_task(reconcile())]
            for task in tasks:  # a dead helper must end the watch, not leave it waiting
                task.add_done_callback(lambda t: t.cancelled() or queue.put_nowait((0, t.exception())))
            try:
                while True:
                    observed, msg = await queue.get()
                    if isinstance(msg, BaseException):
                        raise msg
                    ifname = msg.get("ifname")
                    if ifname in self.interfaces:
                        if msg.get("header", {}).get("type") == RTM_DELLINK:
                            found.pop(ifname, None)
                        else:
                            found[ifname] = msg
                        yield self._reading(ifname, msg, observed)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            events.close()
            queries.close()

"""The nic checker on a real veth pair in a network namespace: the kernel's carrier events become levels."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.checkers.base import Status
from agent.checkers.nic import FAULT_TYPE, MISCONFIGURED, NicChecker
from doctor_common.lab.cloud import ip

from .conftest import Levels


@pytest.fixture
def veth(needs_root: None) -> Iterator[tuple[str, str]]:
    """(namespace, root-side peer): the namespace's eth0 is the link the agent watches."""
    ns, peer = f"doctor-nic-{os.getpid()}", f"dn{os.getpid() % 100000}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", peer, "up")
        ip("-n", ns, "link", "set", "eth0", "up")
        yield ns, peer
    finally:
        subprocess.run(["ip", "link", "del", peer], capture_output=True)
        ip("netns", "del", ns)


async def test_carrier_loss_and_return(veth: tuple[str, str], levels: Callable[[Any], Levels]) -> None:
    """The peer going down takes eth0's carrier: a critical nic fault; back up, OK again."""
    ns, peer = veth
    async with levels(NicChecker(["eth0"], netns=ns, reconcile_s=30)) as lv:
        await lv.until(lambda n: n.get("nic:eth0") is not None and n["nic:eth0"].status == Status.OK)
        ip("link", "set", peer, "down")
        now = await lv.until(lambda n: n["nic:eth0"].status == Status.FAULT, what="carrier lost")
        assert now["nic:eth0"].fault_type == FAULT_TYPE and now["nic:eth0"].details["operstate"] != "UP"
        ip("link", "set", peer, "up")
        await lv.until(lambda n: n["nic:eth0"].status == Status.OK, what="carrier back")


async def test_absent_link_then_created_then_deleted(veth: tuple[str, str],
                                                     levels: Callable[[Any], Levels]) -> None:
    """A watched link the host never had is a configuration problem (a warning for administrators, never the
    NIC fault that fences); created and up, it is OK at once (an event, not the reconciliation: reconcile_s is
    long); deleted once seen, it is a fault. (A veth: no dummy module here.)"""
    ns, _ = veth
    async with levels(NicChecker(["eth0", "dummy7"], netns=ns, reconcile_s=30)) as lv:
        now = await lv.until(lambda n: "nic:dummy7" in n and "nic:eth0" in n)
        assert now["nic:dummy7"].status == Status.WARNING and now["nic:dummy7"].fault_type == MISCONFIGURED
        assert "never seen" in now["nic:dummy7"].description and now["nic:dummy7"].details["operstate"] == "ABSENT"
        assert now["nic:eth0"].status == Status.OK
        ip("-n", ns, "link", "add", "dummy7", "type", "veth", "peer", "name", "dummy7p")
        ip("-n", ns, "link", "set", "dummy7p", "up")
        ip("-n", ns, "link", "set", "dummy7", "up")
        await lv.until(lambda n: n["nic:dummy7"].status == Status.OK, what="dummy7 up")
        ip("-n", ns, "link", "del", "dummy7")
        now = await lv.until(lambda n: n["nic:dummy7"].status == Status.FAULT, what="dummy7 deleted")
        assert now["nic:dummy7"].details["operstate"] == "ABSENT" and now["nic:dummy7"].fault_type == FAULT_TYPE
        assert now["nic:eth0"].status == Status.OK


async def test_reconciliation_reads_the_link_again(veth: tuple[str, str],
                                                   levels: Callable[[Any], Levels]) -> None:
    """Each reconciliation answers with the link's level again (what repairs a dropped event)."""
    ns, _ = veth
    async with levels(NicChecker(["eth0"], netns=ns, reconcile_s=0.1)) as lv:
        await lv.until(lambda n: sum(r.component == "nic:eth0" for r in lv.history) >= 3,
                       what="three readings of eth0")

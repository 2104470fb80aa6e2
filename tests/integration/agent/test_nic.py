"""The nic checker on a real veth pair in a network namespace: the kernel's carrier events become levels."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.checkers.base import Status
from agent.checkers.nic import FAULT_TYPE, NicChecker

from .conftest import Levels


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


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

"""``[fencing] timeout_s`` bounds one whole attempt: power-off and confirmation share one deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from controller_adapter.base import Bmc
from inspector.response.fencing import IpmiFencer


class HangsAfterPowerDown(IpmiFencer):
    """A slow BMC (150 ms a reply) that takes the power-down, then stops answering (as one rebooting itself)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.asked = 0

    async def power_state(self, bmc: Bmc, timeout: float | None = None) -> str:
        self.asked += 1
        if self.asked == 1:
            await asyncio.sleep(0.15)
            return "on"
        await asyncio.sleep(timeout or self.timeout_s)  # what the real call's own wait_for would give
        raise asyncio.TimeoutError()

    async def _call(self, bmc: Bmc, fn: Callable[[Any], Any], timeout: float) -> Any:
        await asyncio.sleep(0.15)
        return {}


async def test_one_attempt_takes_at_most_the_timeout() -> None:
    """The power-down is accepted and the confirmation never comes: the attempt fails after one timeout (it
    took two, power-off and confirmation each bounded on its own), saying which step did not finish."""
    fencer = HangsAfterPowerDown(timeout_s=0.4)
    started = time.monotonic()
    result = await fencer.fence("h1", Bmc("127.0.0.1", 1))
    elapsed = time.monotonic() - started
    assert not result.ok and "confirm power off" in result.error
    assert 0.35 < elapsed < 0.6, elapsed

"""An inspector with its embedded controller and virtual BMCs, but no agents or namespaces: clients are raw."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from doctor_common.lab.cloud import Lab

GHOST_TOKEN = "ghost-agent-token"


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab(hosts=2, servers_per_host=2, netns=False,
              extra_config=f'[notifier]\nqueue_limit = 100\n\n[[auth.agents]]\nhost = "ghost"\ntoken = "{GHOST_TOKEN}"\n')
    try:
        await lab.start(agents=False)
        yield lab
    finally:
        await lab.close()

"""The agent's level/edge bookkeeping."""

from agent.checkers.base import Reading, Status
from agent.state import AgentState


async def test_first_healthy_reading_is_sent_and_repeats_are_not() -> None:
    """A component's first reading becomes an event even when healthy (the Hello may predate it);
    the same level again is not an edge; acks drop what they cover."""
    state = AgentState("h", "t")
    first = state.update("nic", Reading("nic:eth0", Status.OK))
    assert first is not None and first.sequence == 1 and state.components["nic:eth0"].status == Status.OK
    assert state.update("nic", Reading("nic:eth0", Status.OK)) is None
    fault = state.update("nic", Reading("nic:eth0", Status.FAULT, "compute.host.nic.down", 6))
    assert fault is not None and fault.sequence == 2 and list(state.unacked) == [1, 2]
    state.ack(1)
    assert list(state.unacked) == [2]

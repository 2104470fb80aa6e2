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


def test_a_component_that_is_gone_is_sent_once_and_forgotten() -> None:
    """A deleted VM's domain: its OK (gone) goes out as an event, then no Hello carries it again, so a host that
    ran thousands of VMs does not outgrow the Hello's limit."""
    from agent.checkers.base import GONE, Reading, Status

    s = AgentState("h", "v")
    s.update("hypervisor", Reading("domain:vm1", Status.FAULT, "compute.hypervisor.qemu.missing", 6, "dead"))
    event = s.update("hypervisor", Reading("domain:vm1", Status.OK, details={GONE: "true"}))
    assert event is not None and event.state.status == 1
    assert "domain:vm1" not in s.components and not s.hello().hello.components
    assert s.update("hypervisor", Reading("domain:vm9", Status.OK, details={GONE: "true"})) is None  # never known

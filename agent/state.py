"""The agent's view of its host: the current level of every component and the unacknowledged edges."""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from pathlib import Path

from agent.checkers.base import GONE, Reading
from doctor_common.api import agent_pb2

MAX_UNACKED = 10_000  # beyond this the oldest edges go: the level in Hello still heals
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def kernel_boot_id(path: Path = BOOT_ID) -> str:
    """The kernel's boot id: it changes when the host reboots, not when the agent restarts ("" if unreadable)."""
    try:
        return path.read_text().strip()[:64]
    except OSError:
        return ""


class AgentState:
    def __init__(self, host_id: str, version: str) -> None:
        self.host_id = host_id
        self.version = version
        self.boot_id = uuid.uuid4().hex          # this run of the agent
        self.host_boot_id = kernel_boot_id()      # this boot of the host
        self.sequence = 0
        self.components: dict[str, agent_pb2.ComponentState] = {}
        self._readings: dict[str, Reading] = {}
        self.unacked: OrderedDict[int, agent_pb2.Event] = OrderedDict()
        self.changed = asyncio.Event()  # set when there is something new to send
        self.facts: dict[str, str] = {}          # what the host runs (agent/host_facts.py), sent in every Hello

    def update(self, checker: str, reading: Reading) -> agent_pb2.Event | None:
        """Record a reading; return the event when it changed the component's level."""
        previous = self._readings.get(reading.component)
        gone = reading.details.get(GONE) == "true"
        if (gone and previous is None) or (not gone and reading.same_level(previous)):
            return None
        self._readings[reading.component] = reading
        state = reading.to_proto(checker)
        self.components[reading.component] = state
        # a first sight is sent too, healthy or not: the Hello may have gone out before the checker's
        # first reading, and the inspector must learn the whole level, not only the faults
        self.sequence += 1
        event = agent_pb2.Event(sequence=self.sequence, state=state, observed_unix_nanos=reading.observed_ns)
        self.unacked[self.sequence] = event
        while len(self.unacked) > MAX_UNACKED:
            self.unacked.popitem(last=False)
        if gone:  # its last word is on its way (the inspector forgets it too): no Hello carries it again
            del self.components[reading.component]
            del self._readings[reading.component]
        self.changed.set()
        return event

    def resend_levels(self, observed_ns: int) -> None:
        """Every component's current level again, as new events (the inspector asked: it forgot them)."""
        for state in list(self.components.values()):
            self.sequence += 1
            self.unacked[self.sequence] = agent_pb2.Event(sequence=self.sequence, state=state,
                                                          observed_unix_nanos=observed_ns)
        while len(self.unacked) > MAX_UNACKED:
            self.unacked.popitem(last=False)
        self.changed.set()

    def ack(self, sequence: int) -> None:
        while self.unacked:
            first = next(iter(self.unacked))
            if first > sequence:
                break
            del self.unacked[first]

    def hello(self) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            host_id=self.host_id, boot_id=self.boot_id, host_boot_id=self.host_boot_id, agent_version=self.version,
            components=list(self.components.values()), last_sequence=self.sequence, facts=self.facts))

"""Bounded admission: at most ``limit`` handshakes at once; each ticket given back once."""

import pytest

from doctor_common.admission import Admission
from doctor_common.lab.cloud import wait_for


async def test_the_limit_holds_and_tickets_come_back_once() -> None:
    a = Admission(2)
    assert a.enter() and a.enter() and not a.enter() and a.refused == 1
    t = a.ticket()  # the ticket of one of the two admitted
    t.done()
    t.done()  # idempotent: a handshake over and then its stream ending give it back once
    assert a.active == 1 and a.enter() and not a.enter() and a.refused == 2
    with pytest.raises(ValueError):
        Admission(0)


async def test_a_handshake_that_takes_too_long_gives_its_place_back() -> None:
    """A client that stops reading mid-handshake does not keep everyone else out: its place comes back after
    max_hold_s, once."""
    a = Admission(1)
    assert a.enter()
    t = a.ticket(max_hold_s=0.05)
    assert not a.enter()
    await wait_for(lambda: a.active == 0, 2, 0.01, "the place given back")
    t.done()
    assert a.active == 0 and a.enter()


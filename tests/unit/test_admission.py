"""Bounded admission: at most ``limit`` handshakes at once; each ticket given back once."""

import pytest

from doctor_common.admission import Admission


def test_the_limit_holds_and_tickets_come_back_once() -> None:
    a = Admission(2)
    assert a.enter() and a.enter() and not a.enter() and a.refused == 1
    t = a.ticket()  # the ticket of one of the two admitted
    t.done()
    t.done()  # idempotent: a handshake over and then its stream ending give it back once
    assert a.active == 1 and a.enter() and not a.enter() and a.refused == 2
    with pytest.raises(ValueError):
        Admission(0)

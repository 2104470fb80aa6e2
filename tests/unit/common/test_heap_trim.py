"""The heap is trimmed, in a thread, once enough streams ended; not before, not more often than allowed."""

from __future__ import annotations

import asyncio
import threading

from doctor_common.heap_trim import HeapTrim, glibc_trim
from doctor_common.lab.cloud import wait_for


class Spy:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self) -> int:
        self.threads.append(threading.get_ident())
        return 1


async def test_trims_once_enough_streams_ended_off_the_loop() -> None:
    spy = Spy()
    trim = HeapTrim(after=3, delay_s=0.01, min_interval_s=0.0, trim=spy)
    trim.ended()
    trim.ended()
    assert trim._due is None  # two are not enough
    trim.ended()
    await wait_for(lambda: trim.trims == 1, 5, 0.005, "the trim")
    assert spy.threads == [spy.threads[0]] and spy.threads[0] != threading.get_ident()  # once, not on the loop
    assert trim.ended_since == 0
    await trim.close()


async def test_a_second_trim_waits_for_the_minimum_interval() -> None:
    spy = Spy()
    trim = HeapTrim(after=1, delay_s=0.01, min_interval_s=3600.0, trim=spy)
    trim.ended()
    await wait_for(lambda: trim.trims == 1, 5, 0.005, "the first trim")
    trim.ended()  # due an hour after the first
    assert trim._due is not None and trim._due.when() - asyncio.get_running_loop().time() > 3000
    await trim.close()
    assert trim._due is None and len(spy.threads) == 1


async def test_streams_ending_during_a_trim_get_another() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def slow() -> int:
        calls.append(1)
        gate.wait(5)
        return 1

    trim = HeapTrim(after=2, delay_s=0.01, min_interval_s=0.0, trim=slow)
    trim.ended(2)
    await wait_for(lambda: calls, 5, 0.005, "the first trim started")
    trim.ended(2)  # while it runs: nothing scheduled twice
    assert trim._due is None
    gate.set()
    await wait_for(lambda: trim.trims == 2, 5, 0.005, "the second trim")
    await trim.close()


async def test_without_malloc_trim_nothing_is_scheduled() -> None:
    trim = HeapTrim(after=1, delay_s=0.0)
    trim._trim = None  # a C library without malloc_trim (musl)
    trim.ended(10)
    assert trim._due is None and trim.trims == 0
    await trim.close()


def test_glibc_trim_is_found_and_runs() -> None:
    trim = glibc_trim()
    assert trim is not None  # these tests run on glibc (Debian)
    assert trim() in (0, 1)  # 1: memory was released, 0: none could be

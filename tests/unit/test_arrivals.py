"""Chunk lists handed from an upload's ingestion to the thread naming its trees."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from datamon.api.arrivals import Arrivals, IngestStopped
from datamon.core.model import ChunkRef

REF = (ChunkRef(b"\x01" * 32, 1),)


def _adding(pool: ThreadPoolExecutor, arrivals: Arrivals, *paths: str) -> threading.Event:
    """Add ``paths`` from another thread; the event is set once ``add`` has returned."""
    added = threading.Event()

    def add() -> None:
        arrivals.add(dict.fromkeys(paths, REF))
        added.set()

    pool.submit(add)
    return added


def test_a_reader_waits_for_a_path_and_stops_when_ingestion_fails() -> None:
    arrivals = Arrivals()
    with ThreadPoolExecutor(2) as pool:
        got = pool.submit(arrivals.__getitem__, "/a")
        time.sleep(0.05)
        assert not got.done()
        assert "/a" not in arrivals  # asking does not wait
        arrivals.add({"/a": REF})
        assert got.result(10) == REF
        stopped = pool.submit(arrivals.__getitem__, "/b")
        arrivals.fail()
        with pytest.raises(IngestStopped):
            stopped.result(10)


def test_ingestion_is_held_while_too_many_lists_wait_for_the_reader() -> None:
    arrivals = Arrivals(ahead=2)
    with ThreadPoolExecutor(2) as pool:
        assert _adding(pool, arrivals, "/a", "/b").wait(10)  # two: not held
        held = _adding(pool, arrivals, "/c")
        assert not held.wait(0.1)
        arrivals.forget(["/a"])  # the reader let go of one: two wait again
        assert held.wait(10)
        # Held again, until the reader waits for a path not there yet.
        held = _adding(pool, arrivals, "/d")
        assert not held.wait(0.1)
        waiting = pool.submit(arrivals.__getitem__, "/e")
        assert held.wait(10)
        arrivals.add({"/e": REF}, hold=False)
        assert waiting.result(10) == REF
        # Unheld once the reader is done, whatever it left.
        arrivals.done()
        assert _adding(pool, arrivals, "/f", "/g").wait(10)
    assert len(arrivals) == 7 - 1


def test_without_a_bound_ingestion_is_never_held() -> None:
    arrivals = Arrivals()
    arrivals.add({f"/{i}": REF for i in range(100)})
    assert len(arrivals) == 100 and list(arrivals)[:2] == ["/0", "/1"]


def test_lists_added_without_hold_do_not_count_against_the_bound() -> None:
    arrivals = Arrivals(ahead=2)
    # A re-upload's unchanged files, all at once: more than the bound, never held.
    arrivals.add({f"/kept{i}": REF for i in range(5)}, hold=False)
    with ThreadPoolExecutor(2) as pool:
        try:
            assert _adding(pool, arrivals, "/a", "/b").wait(10)  # only these two count
            held = _adding(pool, arrivals, "/c")
            assert not held.wait(0.1)
            arrivals.forget(["/kept0", "/kept1"])  # unheld ones leave: still three held
            assert not held.wait(0.1)
            arrivals.forget(["/a"])
            assert held.wait(10)
        finally:
            arrivals.done()  # a failed check leaves no thread held
    assert arrivals["/kept2"] == REF and "/kept0" not in arrivals and "/kept4" in arrivals
    assert sorted(arrivals) == ["/b", "/c", "/kept2", "/kept3", "/kept4"]
    assert len(arrivals) == 5


def test_a_held_producer_is_let_go_when_ingestion_fails() -> None:
    arrivals = Arrivals(ahead=1)
    with ThreadPoolExecutor(1) as pool:
        try:
            held = _adding(pool, arrivals, "/a", "/b")
            assert not held.wait(0.1)
            arrivals.fail()
            assert held.wait(10)
        finally:
            arrivals.done()  # a failed check leaves no thread held

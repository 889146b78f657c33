"""Forked helper processes: when a process may fork, and waiting for a forked child."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from datamon.cafs.forking import ForkedChild, can_fork, close_all_but, resident_bytes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="forking helpers: Linux")


def _child(body: str) -> ForkedChild:
    """A forked child that runs ``body`` (``exit`` or ``sleep``) and ends."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            if body == "sleep":
                time.sleep(60)
            os._exit(3)
        finally:
            os._exit(1)
    return ForkedChild(pid)


def test_a_child_that_exits_gives_its_code() -> None:
    child = _child("exit")
    assert child.wait(timeout=30) == 3
    assert child.poll() == 3
    assert child.wait() == 3


def test_a_child_that_does_not_end_in_time_raises_and_can_be_killed() -> None:
    child = _child("sleep")
    assert child.poll() is None
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)
    assert time.monotonic() - started < 10
    child.kill()
    assert child.wait(timeout=30) == -9
    child.kill()  # (already ended: nothing to do)


def test_threads_waiting_for_one_child_all_get_its_code() -> None:
    child = _child("exit")
    with ThreadPoolExecutor(4) as threads:
        waits = [threads.submit(child.wait, 30) for _ in range(2)]
        polls = [threads.submit(_poll_until_ended, child) for _ in range(2)]
        assert [done.result() for done in waits + polls] == [3, 3, 3, 3]


def _poll_until_ended(child: ForkedChild) -> int:
    while (code := child.poll()) is None:
        time.sleep(0.001)
    return code


def test_a_child_reaped_elsewhere_counts_as_ended() -> None:
    child = _child("exit")
    os.waitpid(child.pid, 0)
    assert child.poll() == -1
    assert child.wait(timeout=1) == -1


def test_a_child_keeps_only_the_descriptors_it_is_told_to() -> None:
    kept_r, kept_w = os.pipe()
    other_r, other_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            close_all_but({kept_w, report_w})
            mine = [kept_r, kept_w, other_r, other_w, report_w]
            still = [fd for fd in mine if _is_open(fd)]
            others = [fd for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
            os.write(report_w, json.dumps([still, len(others)]).encode())
        finally:
            os._exit(0)
    for fd in (kept_w, other_w, report_w):
        os.close(fd)
    try:
        assert ForkedChild(pid).wait(timeout=30) == 0
        still, count = json.loads(os.read(report_r, 4096))
        assert still == [kept_w, report_w]
        assert count <= 3  # above the standard streams: the two kept, the listing's own
        assert os.read(other_r, 1) == b""  # no writer left: the end of its input
    finally:
        for fd in (kept_r, other_r, report_r):
            os.close(fd)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_only_a_process_without_threads_may_fork() -> None:
    script = (
        "import threading\n"
        "from datamon.cafs.forking import can_fork\n"
        "alone = can_fork()\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait).start()\n"
        "print(alone, can_fork())\n"
        "stop.set()\n"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert found.stdout.split() == ["True", "False"], found.stderr
    assert isinstance(can_fork(), bool)


def test_resident_memory_counts_pages_written() -> None:
    before = resident_bytes()
    assert before is not None and before > 0
    held = bytearray(64 << 20)
    for at in range(0, len(held), 4096):  # (a page left unwritten is not resident)
        held[at] = 1
    after = resident_bytes()
    assert after is not None and after - before >= 60 << 20
    del held

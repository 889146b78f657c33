"""Forking helper processes: when a process may, and a handle to wait for such a child."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time


def can_fork() -> bool:
    """Whether this process may fork a helper: on Linux, with no other thread (a forked
    child of a threaded process may find a lock held for ever)."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def resident_bytes() -> int | None:
    """This process's resident memory (None where ``/proc`` does not say).

    A forked child shares its parent's pages until one of them writes a page, which is then
    copied: a parent with a large heap that it goes on writing pays for those copies."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def close_all_but(keep: set[int]) -> None:
    """In a forked child: close every descriptor above 2 but ``keep``, so that the child
    holds no end of a pipe its parent gave to another process (whose reader would then
    never see the end of its input)."""
    try:
        found = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # (no /proc): the child keeps what it inherited
        return
    for fd in found:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # (the listing's own descriptor, closed)
                os.close(fd)


class ForkedChild:
    """A child forked by this process, waited for as ``subprocess.Popen`` waits for one:
    :meth:`poll`, :meth:`wait` (``subprocess.TimeoutExpired`` after ``timeout``) and
    :meth:`kill`, from any thread. A child reaped by other code counts as ended, with return
    code -1."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._reaping = threading.Lock()  # one waitpid at a time: the child is reaped once

    def poll(self) -> int | None:
        with self._reaping:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    self.returncode = -1
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        # Waits for the end without reaping it, then reaps it in poll(): a thread waiting
        # here and another polling never both reap the child.
        if self.poll() is None and not self._ends_within(timeout):
            raise subprocess.TimeoutExpired(f"process {self.pid}", timeout or 0)
        while (code := self.poll()) is None:  # (ended: reaped at once)
            time.sleep(0.001)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _ends_within(self, timeout: float | None) -> bool:
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # (no pidfd here, or reaped meanwhile): in steps
            return self._polled_within(timeout)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
        finally:
            os.close(fd)

    def _polled_within(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

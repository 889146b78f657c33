"""Worker processes that read, cut, hash and compress groups of small files.

Threads of one interpreter take turns at its lock for the Python work around every file's
system calls; with thousands of small files, that work, not the cores, bounds an upload.
Worker processes each have their own lock. Each runs the loop of
:mod:`datamon.cafs.worker_loop`, forked from this process while it has no other thread, else
in a fresh interpreter that imports only what encoding needs. Unlike ``multiprocessing``,
neither way imports the main module of the program that started it, so it works the same in
any program.

A worker reads requests from a pipe and answers each, in order, on another: frames of a
4-byte little-endian length and a MessagePack body (pipes of their own, not its standard
input and output, which anything the interpreter loads might print to). Several requests
may wait in a worker's pipe, so that it always has its next group. It sends back the chunk
ids and sizes in its reply, and the chunks themselves through a shared mapping: one slot of
:data:`SLOT_BYTES` per group in flight, which the caller copies into its pack and then
releases. The mapping is a ``memfd`` (Linux) the worker inherits: neither ``/dev/shm``,
which containers often keep small, nor a file on disk.

The caller looks the chunks up in its index only once they come back, so a worker cannot
know which chunks the store holds already. It compresses them when asked to, and otherwise
returns them raw for the caller to compress the new ones (see ``Ingester``, which asks for
raw chunks once at least half the chunks of its last group were stored already).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import mmap
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from datamon.cafs import worker_loop
from datamon.cafs.forking import ForkedChild, can_fork, close_all_but, resident_bytes
from datamon.cafs.worker_loop import OS_ERROR, READY, SLOT_BYTES, frame, read_frame
from datamon.core.ids import DIGEST_SIZE
from datamon.core.model import ChunkerParams
from datamon.errors import DatamonError

__all__ = ["SLOT_BYTES", "Encoded", "EncoderPool", "WorkerFailed", "available"]


class WorkerFailed(DatamonError):
    """A worker process stopped before it finished its group (killed, or out of memory)."""


def available() -> bool:
    """Whether worker processes can run here: Linux (``memfd_create``), with a Python
    interpreter to start them with (a frozen application's executable is the application)."""
    return (
        sys.platform == "linux"
        and hasattr(os, "memfd_create")
        and bool(sys.executable)
        and not getattr(sys, "frozen", False)
    )


@dataclass(frozen=True)
class Encoded:
    """A group's chunks as a worker produced them, in file order.

    ``counts[i]`` chunks belong to the ``i``-th file. For each chunk: its id, its raw size,
    its codec byte and its stored payload (a view into the shared mapping, valid until the
    caller's ``with`` block over this object ends). ``codecs`` is None for a group encoded
    without compression: the payloads are then the raw chunks.
    """

    counts: list[int]
    ids: list[bytes]
    sizes: list[int]
    codecs: bytes | None
    payloads: list[memoryview] | list[bytes]
    _release: queue.SimpleQueue[int]
    _slot: int

    def __enter__(self) -> Encoded:
        return self

    def __exit__(self, *exc: object) -> None:
        for view in self.payloads:
            if isinstance(view, memoryview):
                view.release()
        self._release.put(self._slot)


class _Worker:
    """One worker process and the pipes to it.

    Several threads may send it requests before its replies come: the worker then always
    has its next group waiting, instead of idling until a thread is scheduled to send one.
    It answers in order, so each caller reads the reply to its own request when the replies
    before it have been read (a ticket, taken when sending).

    The requests and replies go through pipes of their own, not the worker's standard
    input and output, which anything the interpreter loads might print to.
    """

    def __init__(self, memfd: int, setup: bytes) -> None:
        self.waiting = 0  # requests sent and not yet answered (the pool's lock guards it)
        self._ready = False
        self._sending = threading.Lock()
        self._turns = threading.Condition()
        self._sent = 0  # tickets handed out
        self._read = 0  # replies read
        self._broken = False
        requests_in, requests_out = _pipe()
        try:
            replies_in, replies_out = _pipe()
        except BaseException:
            os.close(requests_in)
            os.close(requests_out)
            raise
        try:
            self.process = _start(requests_in, replies_out, memfd)
        except BaseException:
            for fd in (requests_out, replies_in):
                os.close(fd)
            raise
        finally:  # the worker's ends
            os.close(requests_in)
            os.close(replies_out)
        self._requests = open(requests_out, "wb")  # noqa: SIM115 (closed by close())
        self._replies = open(replies_in, "rb")  # noqa: SIM115
        try:
            self._write(setup)
        except OSError:  # it stopped at once: wait_ready says so
            self._broken = True

    def call(self, message: object) -> Any:
        """The reply to ``message``; EOFError or OSError if the worker stopped."""
        body = msgspec.msgpack.encode(message)
        with self._sending:
            ticket = self._sent
            self._sent += 1
            try:
                self._write(body)
            except BaseException:
                self._break()
                raise
        try:
            with self._turns:
                while self._read != ticket and not self._broken:
                    self._turns.wait()
            self.wait_ready()
            reply = self._receive()
        except BaseException:
            self._break()
            raise
        with self._turns:
            self._read += 1
            self._turns.notify_all()
        return reply

    def wait_ready(self) -> None:
        """Read the frame a worker sends once it has started (by the first reader)."""
        if self._broken:
            raise EOFError("the worker process stopped")
        if not self._ready:
            # poll, not select: a program may hold more than 1,024 descriptors.
            poller = select.poll()
            poller.register(self._replies, select.POLLIN)
            if not poller.poll(START_SECONDS * 1000):
                self._break()
                raise EOFError(f"the worker process did not start in {START_SECONDS} s")
            if self._receive() != READY:
                raise EOFError("the worker process did not start")
            self._ready = True

    def close(self) -> None:
        """Let the worker finish what it was sent, then stop it; callers still waiting for
        a reply fail. A worker never sent a group is stopped at once, without waiting for
        its start to end (an upload that found nothing to read). One whose every reply was
        read writes nothing more: it is left to exit on its own, and waited for by a thread
        of its own (an interpreter's exit took 0.05 s here, at the end of every upload)."""
        with contextlib.suppress(OSError):  # (one that stopped: a broken pipe)
            self._requests.close()  # the end of its input: it exits
        with self._turns:
            answered = self._read == self._sent and not self._broken
        if self._sent and answered:
            threading.Thread(
                target=_reap, args=(self.process,), name="datamon-reap", daemon=True
            ).start()
            with self._turns:
                self._broken = True  # no more requests
        else:
            if self._sent:
                with contextlib.suppress(subprocess.TimeoutExpired):  # then it is killed
                    self.process.wait(timeout=10)
            self._break()
        self._replies.close()

    def _write(self, body: bytes) -> None:
        self._requests.write(frame(body))
        self._requests.flush()

    def _receive(self) -> Any:
        frame = read_frame(self._replies)
        if frame is None:
            raise EOFError("the worker process closed its output")
        return msgspec.msgpack.decode(frame)

    def _break(self) -> None:
        """Stop the worker for good: its replies can no longer be matched to requests, and a
        worker left running could still write to the slots of the requests it was sent, which
        their callers free. Every caller waiting fails."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        with self._turns:
            self._broken = True
            self._turns.notify_all()


class EncoderPool:
    """``workers`` processes encoding groups of small files; :meth:`encode` is thread-safe.

    The processes start at once, in the background; :meth:`wait_ready` waits for them.
    Raises ``OSError`` if the processes or the mapping cannot be made (the caller then
    reads in threads). Call :meth:`close` when done.
    """

    def __init__(self, params: ChunkerParams, level: int, workers: int, slots: int) -> None:
        self._fd = _above_stdio(os.memfd_create("datamon-encode", os.MFD_CLOEXEC))
        self._map: mmap.mmap | None = None
        self._workers: list[_Worker] = []
        self._closing = threading.Lock()
        try:
            os.ftruncate(self._fd, SLOT_BYTES * slots)
            self._map = mmap.mmap(self._fd, SLOT_BYTES * slots)
            setup = msgspec.msgpack.encode([msgspec.to_builtins(params), level, slots])
            for _ in range(workers):
                self._workers.append(_Worker(self._fd, setup))
        except BaseException:
            self.close()
            raise
        self._view = memoryview(self._map)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(slots):
            self._free.put(slot)
        self._choosing = threading.Lock()

    def wait_ready(self) -> None:
        """Wait until every worker has started; ``OSError`` if one could not."""
        try:
            for worker in self._workers:
                worker.wait_ready()
        except (OSError, EOFError, ValueError) as exc:
            raise OSError(f"worker processes did not start: {exc}") from None

    def encode(
        self, files: Sequence[tuple[str, int]], compress: bool = True, plain: bytes | None = None
    ) -> Encoded:
        """Read, cut, hash and (with ``compress``) compress ``(path, size)`` small files
        (their whole size at most :data:`SLOT_BYTES`), but for those ``plain`` marks (a byte
        a file, 1 to store the file raw); waits for a free slot and worker. An unreadable
        file raises the ``OSError`` the worker met."""
        slot = self._free.get()
        try:
            paths = [p for p, _s in files]
            reply = self._call([paths, [s for _p, s in files], slot, compress, plain])
        except BaseException:
            self._free.put(slot)
            raise
        counts, ids, raw, codecs, stored = reply
        payloads: list[memoryview] | list[bytes]
        if all(isinstance(n, int) for n in stored):
            views: list[memoryview] = []
            at = slot * SLOT_BYTES
            for n in stored:
                views.append(self._view[at : at + n])
                at += n
            payloads = views
        else:  # did not fit in the slot: sent inline
            payloads = [bytes(p) for p in stored]
        chunk_ids = [ids[i : i + DIGEST_SIZE] for i in range(0, len(ids), DIGEST_SIZE)]
        return Encoded(counts, chunk_ids, raw, codecs, payloads, self._free, slot)

    def _call(self, request: list[object]) -> list[Any]:
        if self._map is None:
            raise ValueError("encoding with a closed EncoderPool")
        with self._choosing:  # the worker with the fewest requests waiting
            worker = min(self._workers, key=lambda w: w.waiting)
            worker.waiting += 1
        try:
            reply = worker.call(request)
        except (OSError, EOFError, ValueError, msgspec.DecodeError):
            # (A broken pipe, or a reply cut short.)
            raise WorkerFailed("a worker process of the upload stopped") from None
        finally:
            with self._choosing:
                worker.waiting -= 1
        if reply[0] == OS_ERROR:
            _kind, errno, strerror, filename = reply
            raise OSError(errno, strerror, filename)
        return list(reply[1:])

    def close(self) -> None:
        """Stop the workers (after the groups they are encoding) and free the mapping."""
        with self._closing:
            for worker in self._workers:
                worker.close()
            self._workers = []
            if self._map is not None:
                view = getattr(self, "_view", None)
                if view is not None:
                    view.release()
                # A caller still holding a view: the mapping goes with the view.
                with contextlib.suppress(BufferError):
                    self._map.close()
                self._map = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _reap(process: _Process) -> None:
    """Wait for a worker told to exit, killing it if it does not within 10 s."""
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# A worker's start: Ctrl-C reaches the whole process group, and the uploading process handles
# it (it closes the worker's requests, which ends the worker), so the worker ignores it from
# its first statement; then this process's import path (wherever it found datamon and its
# libraries: an installed package, or a path a script added), then the worker's loop.
_BOOT = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
    "sys.path[:] = sys.argv[4:]; from datamon.cafs.worker_loop import main; "
    "main(*map(int, sys.argv[1:4]))"
)
# How long a worker may take to start (an interpreter and a few imports: 0.1 s here).
START_SECONDS = 60
_Process = subprocess.Popen[bytes] | ForkedChild
# A process holding more memory than this starts its workers as fresh interpreters: the pages
# it writes while they run, shared with them, would each be copied (an upload from a program
# holding a large dataset in memory). A W2 upload from the command line forks at 26 MiB.
FORK_RESIDENT = 256 << 20


def _start(requests: int, replies: int, memfd: int) -> _Process:
    """A worker process, holding the descriptors of its pipes' ends and the mapping: forked
    from this one while it has no other thread (an upload's first workers start during its
    scan, before any), else a fresh interpreter.

    A process holding more than :data:`FORK_RESIDENT` also starts fresh interpreters.
    A fresh interpreter costs about 0.1 CPU-second to start and import what it needs, here,
    taken from the scan it runs beside; a forked one has all of it already. W2 uploads, 30
    alternating pairs: forked faster in 25, medians of 2.55-2.58 s against 2.71-2.89 s by set
    (bench/results/floor.md, "worker processes forked").
    """
    if can_fork() and (resident := resident_bytes()) is not None and resident <= FORK_RESIDENT:
        try:
            return _fork(requests, replies, memfd)
        except OSError:  # (no process to spare now): a fresh one may still start later
            pass
    return _spawn(requests, replies, memfd)


def _fork(requests: int, replies: int, memfd: int) -> ForkedChild:
    # Ctrl-C is held back across the fork: the child ignores it before it may arrive there.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return ForkedChild(pid)
    code = 1  # the child: it never returns from here
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # What it inherited stays put: the collector does not walk it (nor copy its pages).
        gc.freeze()
        close_all_but({requests, replies, memfd})
        worker_loop.main(requests, replies, memfd)
        code = 0
    except BaseException:  # as a fresh interpreter would, on its standard error
        traceback.print_exc()
    finally:
        os._exit(code)


def _spawn(requests: int, replies: int, memfd: int) -> subprocess.Popen[bytes]:
    """A fresh interpreter running the worker's loop.

    Isolated (``-I``): neither the environment's ``PYTHON*`` settings nor the current folder
    change what it imports; it gets this process's import path instead.
    """
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _BOOT, str(requests), str(replies), str(memfd), *sys.path],
        stdin=subprocess.DEVNULL,
        pass_fds=(requests, replies, memfd),
    )


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()
    return _above_stdio(read), _above_stdio(write)


def _above_stdio(fd: int) -> int:
    """``fd``, or a copy of it numbered 3 or more: a worker's standard input, output and
    error (0, 1, 2) are its own, so a descriptor it inherits must not take their numbers
    (as it would in a program started with one of them closed)."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)

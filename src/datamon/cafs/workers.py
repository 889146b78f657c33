"""Worker processes that read, cut, hash and compress groups of small files.

Threads of one interpreter take turns at its lock for the Python work around every file's
system calls; with thousands of small files, that work, not the cores, bounds an upload.
Worker processes each have their own lock. They send back the chunk ids and sizes through
a pipe, and the compressed chunks through a shared mapping: one slot of
:data:`SLOT_BYTES` per group in flight, which the caller copies into its pack and then
releases. The mapping is a ``memfd`` (Linux): neither ``/dev/shm``, which containers often
keep small, nor a file on disk.

The caller looks the chunks up in its index only once they come back, so a worker cannot
know which chunks the store holds already. It compresses them when asked to, and otherwise
returns them raw for the caller to compress the new ones (see ``Ingester``, which asks for
raw chunks when most chunks of its last group were stored already).
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import queue
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver, spawn

from datamon.cafs.chunker import FastCDCChunker
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import DIGEST_SIZE, digest
from datamon.core.model import ChunkerParams
from datamon.errors import DatamonError

log = logging.getLogger(__name__)

# The largest group's raw bytes: the groups of an upload close once they reach 8 MiB, so the
# last file (at most 1 MiB, the small-file limit) may take one past that; a stored chunk is
# never larger than its raw bytes.
SLOT_BYTES = 10 << 20
# What the worker processes' server imports once, before it forks each worker: this module,
# and the program's main module (a console script), which a worker would otherwise run
# again itself as ``__mp_main__`` (``datamon`` imports the whole command line). Workers
# run only where that import is safe (main_is_safe).
_PRELOAD = ["__main__", __name__]
# Main modules known to do nothing when imported under another name (``python -m datamon``).
_SAFE_MAIN_MODULES = frozenset({"datamon.__main__"})


class WorkerFailed(DatamonError):
    """A worker process stopped before it finished its group (killed, or out of memory)."""


def available() -> bool:
    """Whether worker processes can run here: Linux (``memfd_create``), in a program whose
    main module they may import (see :func:`main_is_safe`)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and main_is_safe()


def main_is_safe() -> bool:
    """Whether worker processes may import this program's main module.

    Every process ``multiprocessing`` starts imports the main module of the program that
    started it, to find what was defined there: harmless only for a main module that
    guards its work with ``if __name__ == "__main__"``. That is known of Datamon's own
    command line, and there is nothing to import for ``python -c`` and interactive
    sessions. Other programs (a script of one's own may not guard) read files in threads.
    """
    data = spawn.get_preparation_data("datamon-encode")
    name = data.get("init_main_from_name")
    path = data.get("init_main_from_path")
    if name is None and path is None:
        return True
    if name is not None:
        return name in _SAFE_MAIN_MODULES
    return os.path.basename(str(path)) == "datamon"  # the console script


def prepare() -> None:
    """Start the worker processes' server now, so that its start overlaps other work (the
    scan of the folder); it then imports this module while this process goes on."""
    if not available():
        return
    try:
        _context()
        forkserver.ensure_running()
    except (OSError, ValueError) as exc:
        log.debug("worker processes unavailable: %s", exc)


def _context() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, with what its server must import first."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


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


class EncoderPool:
    """``workers`` processes encoding groups of small files; :meth:`encode` is thread-safe.

    Raises ``OSError`` if the processes or the mapping cannot be made (the caller then
    reads in threads). Call :meth:`close` when done.
    """

    def __init__(self, params: ChunkerParams, level: int, workers: int, slots: int) -> None:
        self._fd = os.memfd_create("datamon-encode", os.MFD_CLOEXEC)
        self._map: mmap.mmap | None = None
        self._pool: ProcessPoolExecutor | None = None
        try:
            os.ftruncate(self._fd, SLOT_BYTES * slots)
            self._map = mmap.mmap(self._fd, SLOT_BYTES * slots)
            ctx = _context()
            # The workers open the mapping through this process's descriptor.
            where = f"/proc/{os.getpid()}/fd/{self._fd}"
            self._pool = ProcessPoolExecutor(
                workers, ctx, initializer=_start, initargs=(params, level, where, slots)
            )
            # Start the workers (and find a failure) now, not at the first group.
            for done in [self._pool.submit(_ready) for _ in range(workers)]:
                done.result()
        except BrokenProcessPool as exc:
            self.close()
            raise OSError(f"worker processes did not start: {exc}") from None
        except BaseException:
            self.close()
            raise
        self._view = memoryview(self._map)
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(slots):
            self._free.put(slot)

    def encode(self, files: Sequence[tuple[str, int]], compress: bool = True) -> Encoded:
        """Read, cut, hash and (with ``compress``) compress ``(path, size)`` small files
        (their whole size at most :data:`SLOT_BYTES`); waits for a free slot. An unreadable
        file raises the worker's ``OSError``."""
        slot = self._free.get()
        try:
            paths = [path for path, _size in files]
            sizes = [size for _path, size in files]
            if self._pool is None:
                raise ValueError("encoding with a closed EncoderPool")
            try:
                counts, ids, raw, codecs, stored = self._pool.submit(
                    _encode, paths, sizes, slot, compress
                ).result()
            except BrokenProcessPool:
                raise WorkerFailed("a worker process of the upload stopped") from None
        except BaseException:
            self._free.put(slot)
            raise
        payloads: list[memoryview] | list[bytes]
        if all(isinstance(n, int) for n in stored):
            views: list[memoryview] = []
            at = slot * SLOT_BYTES
            for n in stored:
                views.append(self._view[at : at + int(n)])
                at += int(n)
            payloads = views
        else:  # did not fit in the slot: sent inline
            payloads = [bytes(p) for p in stored]
        chunk_ids = [ids[i : i + DIGEST_SIZE] for i in range(0, len(ids), DIGEST_SIZE)]
        return Encoded(counts, chunk_ids, list(raw), codecs, payloads, self._free, slot)

    def close(self) -> None:
        """Stop the workers (after the groups they are encoding) and free the mapping."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._map is not None:
            view = getattr(self, "_view", None)
            if view is not None:
                view.release()
            try:
                self._map.close()
            except BufferError:  # a caller still holds a view: the mapping goes with it
                log.debug("encoder mapping still in use at close")
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# In each worker process: its chunker, codec and the shared mapping.
_state: dict[str, object] = {}


def _start(params: ChunkerParams, level: int, where: str, slots: int) -> None:
    fd = os.open(where, os.O_RDWR | os.O_CLOEXEC)
    try:
        _state["map"] = mmap.mmap(fd, SLOT_BYTES * slots)
    finally:
        os.close(fd)
    _state["chunker"] = FastCDCChunker(params)
    _state["codec"] = ChunkCodec(level)


def _ready() -> bool:
    return True


def _encode(
    paths: list[str], sizes: list[int], slot: int, compress: bool
) -> tuple[list[int], bytes, list[int], bytes | None, list[int] | list[bytes]]:
    """In a worker: the group's chunk counts per file, chunk ids (joined), raw sizes, codec
    bytes (None without ``compress``) and payload sizes; the payloads (the raw chunks
    without ``compress``) are written, in order, to the slot. Files that grew since they
    were stat'ed may not fit: the payloads are then returned instead of their sizes."""
    chunker: FastCDCChunker = _state["chunker"]  # type: ignore[assignment]
    codec: ChunkCodec = _state["codec"]  # type: ignore[assignment]
    shared: mmap.mmap = _state["map"]  # type: ignore[assignment]
    read = FastCDCChunker.read
    counts: list[int] = []
    ids: list[bytes] = []
    raws: list[bytes] = []
    for path, size in zip(paths, sizes, strict=True):
        before = len(raws)
        for raw in chunker.chunks_of(read(path, size)):
            ids.append(digest(raw))
            raws.append(raw)
        counts.append(len(raws) - before)
    sizes_out = [len(raw) for raw in raws]
    codecs: bytes | None = None
    payloads: Sequence[bytes | memoryview] = raws
    if compress:
        encoded = codec.encode_many(raws)
        codecs = bytes(codec_byte for codec_byte, _payload in encoded)
        payloads = [payload for _codec, payload in encoded]
    if sum(len(payload) for payload in payloads) > SLOT_BYTES:
        return counts, b"".join(ids), sizes_out, codecs, [bytes(p) for p in payloads]
    at = slot * SLOT_BYTES
    stored: list[int] = []
    for payload in payloads:
        n = len(payload)
        shared[at : at + n] = payload
        at += n
        stored.append(n)
    return counts, b"".join(ids), sizes_out, codecs, stored

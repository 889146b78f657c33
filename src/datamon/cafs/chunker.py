"""FastCDC chunking of files and buffers, with the store's parameters."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Iterator
from typing import Protocol

import pyfastcdc

from datamon.cafs.sources import check_regular, named, open_source
from datamon.core.model import ChunkerParams
from datamon.errors import ConfigError

_STREAM_BUFFER = 1 << 20
# Streams are read in blocks of this size (at least twice the maximum chunk), and their chunks
# are views into the block: no chunk is copied.
BLOCK = 4 << 20
# Block buffers kept for reuse by one chunker (about a file thread's batches in flight).
KEPT_BLOCKS = 8
# References to a block buffer no chunk views: the chunker's list, and getrefcount's argument.
_FREE_REFS = 2

Chunk = bytes | memoryview


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class FastCDCChunker:
    """Cuts byte streams where their content says to, so an insert moves few boundaries."""

    def __init__(self, params: ChunkerParams) -> None:
        if params.algorithm != "fastcdc2020":
            raise ConfigError(f"unknown chunker {params.algorithm!r}")
        if not 0 <= params.seed < 2**64:
            raise ConfigError(f"chunker seed {params.seed} is outside 0..2^64-1")
        if not 64 <= params.min_size <= params.avg_size <= params.max_size:
            raise ConfigError(f"chunker sizes are inconsistent: {params}")
        self.params = params
        self.block = max(BLOCK, 2 * params.max_size)
        self._blocks: list[bytearray] = []
        self._blocks_lock = threading.Lock()

    def _take_block(self) -> bytearray:
        """A block buffer that nothing references any more, or a new one.

        Allocating and faulting in a fresh 4 MiB buffer per block cost more here than the
        FastCDC cuts themselves. A block is free again once every chunk view of it is gone:
        views hold a reference to it, so its reference count tells (CPython's counting; the
        list and the call's argument are the only references of a free block).
        """
        with self._blocks_lock:
            blocks = self._blocks
            for i in range(len(blocks)):
                # Indexed, not bound to a name: a loop variable would be one more reference.
                if sys.getrefcount(blocks[i]) == _FREE_REFS:
                    return blocks.pop(i)
        return bytearray(self.block)

    def _give_back(self, block: bytearray) -> None:
        with self._blocks_lock:
            if len(self._blocks) < KEPT_BLOCKS and len(block) == self.block:
                self._blocks.append(block)

    def _cdc(self) -> pyfastcdc.FastCDC:
        # The Cython chunker is not safe to share between threads; it is cheap to build.
        p = self.params
        return pyfastcdc.FastCDC(
            p.avg_size,
            min_size=p.min_size,
            max_size=p.max_size,
            normalized_chunking=p.normalization,  # type: ignore[arg-type]
            seed=p.seed,
        )

    def chunks(self, stream: Readable) -> Iterator[memoryview]:
        """The chunks of ``stream``, as views into blocks read from it.

        Every block is a fresh buffer that is never written again once cut, so a view stays
        valid for as long as it is referenced. The last chunk of a block is not final (the
        block may have cut it short): it is carried to the front of the next block and cut
        again there, which gives the cuts of the whole stream read at once.
        """
        cdc = self._cdc()
        size = self.block
        carry = memoryview(b"")
        while True:
            buffer = self._take_block()
            block = memoryview(buffer)
            filled = len(carry)
            block[:filled] = carry
            end = False
            while filled < size:
                got = stream.readinto(block[filled:])
                if not got:
                    end = True
                    break
                filled += got
            data = block[:filled]
            carry = memoryview(b"")
            for chunk in cdc.cut_buf(data):
                stop = chunk.offset + chunk.length
                if stop == filled and not end:
                    carry = data[chunk.offset : stop]
                    break
                yield data[chunk.offset : stop]
            self._give_back(buffer)  # used again only once no view of it is left
            del buffer
            if end:
                return

    def chunks_of(self, data: bytes | memoryview) -> Iterator[bytes]:
        if len(data) <= self.params.min_size:
            # FastCDC never cuts below the minimum size: one chunk, or none for no data.
            if len(data):
                yield bytes(data)
            return
        for chunk in self._cdc().cut_buf(data):
            yield bytes(chunk.data)

    @staticmethod
    def open(path: str) -> io.FileIO:
        """A large file for :meth:`chunks`, checked to be the regular file the scan found.

        Unbuffered: blocks are read straight into the chunker's buffers.
        """
        fd = open_source(path)
        try:
            check_regular(fd, path)
        except OSError:
            os.close(fd)
            raise
        return io.FileIO(fd, "rb", closefd=True)

    @staticmethod
    def read(path: str, size: int) -> bytes:
        """The whole of a small file whose size was ``size`` when stat'ed.

        Unbuffered: a buffered file object would cost a buffer allocation per file, which
        dominates when the files are a few KiB. Reads to the end if the file grew. A first
        read that returns exactly ``size`` bytes is taken as the whole file, without a second
        read to see the end: the file as the stat saw it (W2: 50,000 system calls fewer, each
        a hand-over of the interpreter lock between the ingesting threads).
        """
        fd = open_source(path)
        try:
            data = os.read(fd, size + 1)
            if len(data) == size:
                return data
            # Not the size the scan saw: a file that changed since, or no longer a file.
            check_regular(fd, path)
            if not data:
                return data
            # Network and FUSE file systems may return less than asked before the end:
            # only an empty read is the end.
            parts = [data]
            while more := os.read(fd, _STREAM_BUFFER):
                parts.append(more)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise named(exc, path) from None
        finally:
            os.close(fd)

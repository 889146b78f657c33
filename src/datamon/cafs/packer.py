"""PackWriter: appends encoded chunks into packs and writes each pack, then its index."""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from datamon.cafs.index import ChunkIndex
from datamon.cafs.layout import index_key, pack_key
from datamon.core.codecs import CODEC_SHARED, encode_frame, pack_msg
from datamon.core.ids import hexdigest
from datamon.core.model import PACK_INDEX_FORMAT, PackEntry, PackIndex
from datamon.storage.local import direct_buffer

log = logging.getLogger(__name__)
T = TypeVar("T")
Payload = bytes | memoryview
# A pack's buffer: an anonymous mapping (page-aligned, so a local store can write it with
# O_DIRECT), or a bytearray for a pack grown past its slack by an oversized chunk.
Buffer = mmap.mmap | bytearray
# Room beyond the pack size in each pack buffer, for the chunk that takes it past the size.
SLACK = 1 << 20
# A pack is also sealed once it holds this many chunks, so that a tree of tiny files does not
# gather hundreds of thousands of chunks in one pack whose index is built, written and
# recorded only when the upload closes.
PACK_CHUNKS = 65_536
# Written packs whose chunks wait to be recorded in the local index together (see _write),
# and how many chunks they may hold: a pack of tiny chunks is recorded at once, as one
# transaction of a few hundred thousand rows is enough, and would otherwise wait for close.
# Recording 4 at a time, while the upload goes on, raised a W2 upload's peak RSS from
# 111-132 MiB to 130-153 MiB (4 uploads each): each recording's SQLite statement and rows
# were held beside the ingestion's buffers. 16 packs of 2,800 chunks take 0.12 s alone.
RECORD_PACKS = 16
RECORD_CHUNKS = 50_000


class PackWriter:
    """Thread-safe. At most ``max_pending`` sealed packs wait for upload, and at most
    ``buffers`` pack buffers exist (``max_pending`` + 1 unless told): a thread that needs a
    buffer while all are in use waits for a pack's upload to end. That bounds memory.

    Pack buffers are allocated at their full size once and used again once their pack is
    written: filling a fresh, growing buffer for every pack cost a third of a second of
    page faults and copies per GiB here, all of it holding the GIL. They are anonymous
    mappings, whose start is page-aligned, so that the local store can write them to disk
    without copying them into the page cache first (``storage/local.py``).
    """

    def __init__(
        self,
        index: ChunkIndex,
        pack_size: int,
        max_pending: int = 2,
        uploaders: int = 2,
        buffers: int | None = None,
    ) -> None:
        self.index = index
        self.blob = index.blob
        self.pack_size = pack_size
        self._lock = threading.Lock()
        # Taken when the first chunk comes: an upload that stores nothing new (a re-upload)
        # allocates no pack buffer, and none is allocated after the last pack is sealed.
        self._buffer: Buffer | None = None
        self._used = 0
        self._free: list[Buffer] = []
        # Buffers that exist (in use, sealed, being written or free), and how many may.
        # Without a bound, a thread sealing a pack waited for an upload slot while others
        # took a new buffer: a W2 upload held 2, 3 or 4 buffers, 17 MiB each, by timing.
        self._made = 0
        self._limit = max(1, buffers if buffers is not None else max_pending + 1)
        self._returned = threading.Condition(self._lock)
        self._entries: list[PackEntry] = []
        # Chunk id -> number of the pack it was put in; pack number -> id once written.
        self._seen: dict[bytes, int] = {}
        self._seq = 0
        self._written: dict[int, str] = {}
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(uploaders, thread_name_prefix="datamon-pack")
        self._futures: list[Future[str]] = []
        self.packs: list[str] = []
        self._unrecorded: list[PackIndex] = []
        self._unrecorded_chunks = 0
        # Records many packs at once, away from the uploads (see _write).
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="datamon-record")
        self._recordings: list[Future[None]] = []
        self.bytes_written = 0
        self.chunks_written = 0

    def seen(self, cid: bytes) -> bool:
        with self._lock:
            return cid in self._seen

    def packs_of_each(self, groups: Iterable[Sequence[bytes]]) -> list[frozenset[str] | None]:
        """For each group of chunk ids, the packs this writer wrote them to; None for a group
        with a chunk not (yet) written. Equal sets are one object."""
        names: dict[frozenset[int], frozenset[str] | None] = {}
        shared: dict[frozenset[str], frozenset[str]] = {}
        out: list[frozenset[str] | None] = []
        for numbers in self.numbers_of_each(groups):
            if numbers not in names:
                found = self.names_of(numbers)
                names[numbers] = None if found is None else _shared(shared, found)
            out.append(names[numbers])
        return out

    def numbers_of_each(self, groups: Iterable[Sequence[bytes]]) -> list[frozenset[int]]:
        """For each group of chunk ids queued here, the numbers of the packs they are in
        (:meth:`names_of` gives their ids once written); equal sets are one object. A chunk
        this writer never had counts as pack -1, which is never written."""
        sets: dict[frozenset[int], frozenset[int]] = {}
        single: dict[int, frozenset[int]] = {}  # a group of one chunk, by pack number
        out: list[frozenset[int]] = []
        with self._lock:
            seen = self._seen
            for cids in groups:
                if len(cids) == 1:
                    seq = seen.get(cids[0], -1)
                    found = single.get(seq)
                    if found is None:
                        found = single[seq] = _shared(sets, frozenset((seq,)))
                    out.append(found)
                else:
                    out.append(_shared(sets, frozenset([seen.get(cid, -1) for cid in cids])))
        return out

    def names_of(self, numbers: Iterable[int]) -> frozenset[str] | None:
        """The ids of the packs numbered ``numbers``; None if one is not written."""
        with self._lock:
            names = [self._written.get(seq) for seq in numbers]
        known = [name for name in names if name is not None]
        return frozenset(known) if len(known) == len(names) else None

    def add(self, cid: bytes, codec: int, payload: Payload, size: int) -> bool:
        """Queue an encoded chunk (codec byte and payload); False if this writer has it."""
        return self.add_many([(cid, codec, payload, size)]) == 1

    def add_many(self, chunks: Iterable[tuple[bytes, int, Payload, int]]) -> int:
        """Queue encoded chunks side by side in one pack; returns how many were new. Waits
        while every pack buffer is in use, having handed over the packs it sealed.

        The chunks of a shared frame come as ``encode_group`` gives them: the first with
        the frame, the others (``CODEC_SHARED`` with an empty payload) after it, maybe with
        other chunks among them. The frame is stored if one of its chunks is new, and each
        new one gets an entry naming the frame and where in its content the chunk starts."""
        items = chunks if isinstance(chunks, list) else list(chunks)
        added = at = 0
        covered: set[int] = set()  # the positions of chunks stored with their frame's first
        while True:
            sealed: list[tuple[int, Buffer, int, list[PackEntry]]] = []
            with self._lock:
                at, count = self._add_from(items, at, sealed, covered)
                self.chunks_written += count
            added += count
            for i, pack in enumerate(sealed):
                try:
                    self._submit(*pack)
                except BaseException:  # (an earlier upload failed) the buffers are free
                    for _seq, buffer, _used, _entries in sealed[i:]:
                        self._release(buffer)
                    raise
            if at == len(items):
                return added
            with self._lock:
                while self._buffer is None and not self._free and self._made >= self._limit:
                    self._returned.wait()

    def _add_from(
        self,
        items: list[tuple[bytes, int, Payload, int]],
        at: int,
        sealed: list[tuple[int, Buffer, int, list[PackEntry]]],
        covered: set[int],
    ) -> tuple[int, int]:
        """Append ``items[at:]`` (holding the lock) until they end or no buffer is to be
        had; the packs filled go to ``sealed``. Returns where it stopped and how many it
        added."""
        added = 0
        seen = self._seen
        for cid, codec, payload, size in items[at:]:
            if codec == CODEC_SHARED:
                if not len(payload):
                    if at not in covered:
                        raise ValueError(f"chunk {cid.hex()} of a shared frame came without it")
                else:
                    new = self._add_frame(items, at, covered)
                    if new is None:
                        return at, added
                    added += new
                    if self._used >= self.pack_size or len(self._entries) >= PACK_CHUNKS:
                        sealed.append(self._take())
            elif cid not in seen:
                if self._buffer is None and not self._free and self._made >= self._limit:
                    return at, added
                seen[cid] = self._seq
                self._entries.append(PackEntry(cid, self._used, 1 + len(payload), size))
                self._append(codec, payload)
                added += 1
                if self._used >= self.pack_size or len(self._entries) >= PACK_CHUNKS:
                    sealed.append(self._take())
            at += 1
        return at, added

    def _add_frame(
        self, items: list[tuple[bytes, int, Payload, int]], head: int, covered: set[int]
    ) -> int | None:
        """Append the shared frame given at ``items[head]`` if one of its chunks is new, and
        an entry for each new one (holding the lock); returns how many entries it added,
        None if no buffer is to be had."""
        members = [head]
        for k in range(head + 1, len(items)):
            if items[k][1] == CODEC_SHARED:
                if len(items[k][2]):
                    break
                members.append(k)
        seen = self._seen
        if all(items[k][0] in seen for k in members):
            covered.update(members)
            return 0
        if self._buffer is None and not self._free and self._made >= self._limit:
            return None
        _cid, codec, payload, _size = items[head]
        offset, length = self._used, 1 + len(payload)
        self._append(codec, payload)
        inner = added = 0
        for k in members:
            cid, _codec, _payload, size = items[k]
            if cid not in seen:
                seen[cid] = self._seq
                self._entries.append(PackEntry(cid, offset, length, size, inner))
                added += 1
            inner += size
        covered.update(members)
        return added

    def _new_buffer(self) -> Buffer:
        self._made += 1
        return direct_buffer(self.pack_size + SLACK)

    def _append(self, codec: int, payload: Payload) -> None:
        buf, at = self._buffer, self._used
        if buf is None:
            buf = self._buffer = self._free.pop() if self._free else self._new_buffer()
        end = at + 1 + len(payload)
        if end > len(buf):  # a chunk larger than the slack: grow this buffer
            grown = bytearray(end)
            grown[:at] = memoryview(buf)[:at]
            self._buffer = buf = grown
        buf[at] = codec
        buf[at + 1 : end] = payload
        self._used = end

    def _take(self) -> tuple[int, Buffer, int, list[PackEntry]]:
        seq, data, used, entries = self._seq, self._buffer, self._used, self._entries
        if data is None:  # only sealed once something was appended
            raise AssertionError("sealing a pack without a buffer")
        self._seq += 1
        self._buffer = None
        self._used = 0
        self._entries = []
        return seq, data, used, entries

    def _release(self, buffer: Buffer, reuse: bool = True) -> None:
        """``buffer``'s pack is uploaded, or will not be: it may be filled again (unless not
        ``reuse``: another may be made instead)."""
        with self._lock:
            if reuse and len(buffer) == self.pack_size + SLACK:
                self._free.append(buffer)
            else:  # grown past its slack: let go of, and one may be made again
                self._made -= 1
            self._returned.notify_all()

    def _submit(self, seq: int, data: Buffer, used: int, entries: list[PackEntry]) -> None:
        self._raise_failures()
        self._slots.acquire()
        try:
            future = self._pool.submit(self._write, seq, data, used, entries)
        except BaseException:  # (the writer was aborted)
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        with self._lock:
            self._futures.append(future)

    def _write(self, seq: int, buffer: Buffer, used: int, entries: list[PackEntry]) -> str:
        # The buffer is written as it is: a copy would double the memory of each pack.
        written = False
        try:
            # Named after its entries (design §4.1), not its bytes: hashing every byte
            # stored again, after each chunk's own hash, cost a W2 upload 0.12 CPU-seconds.
            pack_id = hexdigest(pack_msg(entries))
            whole = memoryview(buffer)
            data = whole[:used]
            # Write order: the pack, then its index, then (in the index copy) where to
            # find its chunks.
            self.blob.put_if_absent(pack_key(pack_id), data)
            written = True
            data.release()
            whole.release()
        finally:
            # Written: the buffer is free. Failed (the failure is raised later): an object
            # store's client may still hold a view of it (releasing ours then raised
            # BufferError, hiding the failure), so it is let go of, not filled again.
            self._release(buffer, reuse=written)
        index = PackIndex(format=PACK_INDEX_FORMAT, pack=pack_id, entries=tuple(entries))
        _digest, framed = encode_frame(pack_msg(index))
        self.blob.put_if_absent(index_key(pack_id), framed)
        with self._lock:
            self.packs.append(pack_id)
            self._written[seq] = pack_id
            self.bytes_written += used
            self._unrecorded.append(index)
            self._unrecorded_chunks += len(index.entries)
            full = len(self._unrecorded) >= RECORD_PACKS or self._unrecorded_chunks >= RECORD_CHUNKS
        if full:
            # This writer finds its own chunks through ``seen``, not the local index, so the
            # index rows can wait and be written for many packs in one transaction, in a
            # thread of its own: neither the next pack's upload nor close waits for it.
            recording = self._recorder.submit(self._record)
            with self._lock:
                self._recordings.append(recording)
        return pack_id

    def record(self) -> None:
        """Record every written pack in the local index, once the writes are over (after
        :meth:`close` or :meth:`abort`); raises the first error of a recording."""
        self._recorder.shutdown(wait=True)
        self._record()
        with self._lock:
            recordings, self._recordings = self._recordings, []
        for recording in recordings:
            recording.result()

    def _record(self) -> None:
        """Record the written packs not yet in the local index."""
        with self._lock:
            indexes, self._unrecorded = self._unrecorded, []
            self._unrecorded_chunks = 0
        if indexes:
            self.index.record_many(indexes)

    def _raise_failures(self) -> None:
        with self._lock:
            done = [f for f in self._futures if f.done()]
        for future in done:
            future.result()

    def close(self, record: bool = True) -> list[str]:
        """Write the last pack and wait for every upload; returns the packs written. With
        ``record`` false, the last packs written wait for :meth:`record` to be recorded in
        the local index: a caller may do that while it goes on (an upload, once it commits;
        the index only saves later uploads from reading pack indexes from the store)."""
        with self._lock:
            rest = self._take() if self._entries else None
        if rest is not None:
            self._submit(*rest)
        try:
            for future in list(self._futures):
                future.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if record:
                self.record()
        return list(self.packs)

    def abort(self) -> None:
        """Stop; the packs already written are recorded, as a later upload may use them."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.record()
        except Exception as exc:  # the error being handled matters more than this one
            log.warning("could not record written packs in the local index: %s", exc)


def _shared(sets: dict[frozenset[T], frozenset[T]], key: frozenset[T]) -> frozenset[T]:
    return sets.setdefault(key, key)

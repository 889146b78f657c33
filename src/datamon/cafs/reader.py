"""ChunkReader: reads chunks back from packs, coalescing neighbours into one range read."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from datamon.cafs.index import ChunkIndex, Location
from datamon.cafs.layout import pack_key
from datamon.core.codecs import CODEC_SHARED, ChunkCodec, member
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.errors import ChecksumMismatch, CorruptObject

# A window of chunks looked up and fetched together: at most this many chunks, and no more
# raw bytes than WINDOW_BYTES (beyond one chunk), whatever the store's chunk size.
WINDOW_CHUNKS = 128
WINDOW_BYTES = 8 << 20
MAX_READ = 8 << 20
MAX_GAP = 64 << 10
R = TypeVar("R", bytes, bytes | memoryview)
SHARED = bytes((CODEC_SHARED,))
# Shared frames a thread keeps opened (each at most FRAME_LIMIT, 64-96 KiB as written).
FRAMES_KEPT = 8


def windows(
    refs: Sequence[ChunkRef], max_chunks: int, max_bytes: int
) -> Iterator[Sequence[ChunkRef]]:
    """``refs`` in consecutive runs of at most ``max_chunks`` chunks, each ending with the
    chunk that brings its raw size to ``max_bytes`` or more."""
    start = size = 0
    for i, ref in enumerate(refs):
        size += ref.size
        if size >= max_bytes or i + 1 - start >= max_chunks:
            yield refs[start : i + 1]
            start, size = i + 1, 0
    if start < len(refs):
        yield refs[start:]


class ChunkReader:
    """Thread-safe; every chunk is hashed and checked against its id before it is returned."""

    def __init__(self, index: ChunkIndex) -> None:
        self.index = index
        self.blob = index.blob
        self._local = threading.local()

    def _frames(self) -> OrderedDict[tuple[str, int], bytes]:
        """This thread's last shared frames opened, by pack key and offset, least recently
        used first: a frame holds several small files, which callers often ask for one at a
        time (a check, a mount, a file system's reads), and a pack never changes."""
        frames: OrderedDict[tuple[str, int], bytes] | None = getattr(self._local, "frames", None)
        if frames is None:
            frames = self._local.frames = OrderedDict()
        return frames

    def forget(self) -> None:
        """Drop this thread's remembered frames: its next reads fetch every frame from the
        store again (a check of what the store holds now, not of what it held)."""
        self._frames().clear()

    def _codec(self) -> ChunkCodec:
        codec: ChunkCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = ChunkCodec()
        return codec

    def read(self, refs: Sequence[ChunkRef]) -> Iterator[bytes]:
        """The raw bytes of each chunk, in order.

        Each window of chunks is read in pack order, in ranges that cover neighbours
        and small gaps, so chunks scattered over a pack cost few reads.
        """
        for window in windows(refs, WINDOW_CHUNKS, WINDOW_BYTES):
            yield from self._copied(window, _runs(self._locate(window)))

    def stream(self, refs: Sequence[ChunkRef]) -> Iterator[bytes | memoryview]:
        """The raw bytes of each chunk, in order, as :meth:`read` gives them, except that a
        chunk stored uncompressed may come as a read-only view of this thread's read
        buffer, valid only until the next chunk is asked for, or until this thread reads
        from the store in any other way (``read``, another ``stream``, a range read), which
        may reuse the buffer.

        For callers that write each chunk out before asking for the next (downloads,
        checks): where a window's chunks lie in the packs in the order asked for, as a
        file's chunks do once uploaded, its uncompressed chunks are checked and handed on
        where they were read, not copied first.
        """
        for window in windows(refs, WINDOW_CHUNKS, WINDOW_BYTES):
            runs = _runs(self._locate(window))
            if [cid for run in runs for cid, _loc in run] != [ref.id for ref in window]:
                yield from self._copied(window, runs)
                continue
            borrowed = self._codec().decode_borrowed
            for run in runs:
                for _cid, raw in self._decode_run(run, borrowed):
                    yield raw

    def _copied(
        self, window: Sequence[ChunkRef], runs: list[list[tuple[bytes, Location]]]
    ) -> Iterator[bytes]:
        """The window's chunks, each its own bytes, read in ``runs`` and given in order."""
        decode = self._codec().decode
        got: dict[bytes, bytes] = {}
        for run in runs:
            got.update(self._decode_run(run, decode))
        for ref in window:
            yield got[ref.id]

    def _locate(self, window: Sequence[ChunkRef]) -> dict[bytes, Location]:
        where = self.index.lookup_many([r.id for r in window])
        missing = next((r for r in window if r.id not in where), None)
        if missing is not None:
            raise CorruptObject(f"chunk {missing.id.hex()}", "no pack in the store holds it")
        return {r.id: where[r.id] for r in window}

    def _decode_run(
        self, run: list[tuple[bytes, Location]], decode: Callable[[str, memoryview, int], R]
    ) -> Iterator[tuple[bytes, R]]:
        """Read one range and give each chunk in it, opened by ``decode`` and checked
        against its id."""
        first = run[0][1]
        key = pack_key(first.pack)
        frames = self._frames()
        # The frames this run finds remembered, held here: while a caller holds this
        # generator, other reads in its thread may push them out of the memory.
        kept = {
            loc.offset: frames[key, loc.offset] for _cid, loc in run if (key, loc.offset) in frames
        }
        view = memoryview(b"")
        if not all(loc.offset in kept for _cid, loc in run):
            end = max(loc.offset + loc.length for _cid, loc in run)
            span = end - first.offset
            view = self.blob.get_range_view(key, first.offset, span)
            if len(view) < span:
                raise CorruptObject(key, f"truncated: wanted {span} bytes at {first.offset}")
        for cid, loc in run:
            raw: R
            content = kept.get(loc.offset)
            if content is not None:
                if (key, loc.offset) in frames:
                    frames.move_to_end((key, loc.offset))
            else:
                at = loc.offset - first.offset
                blob = view[at : at + loc.length]
                if blob[:1] == SHARED:
                    content = kept[loc.offset] = self._codec().open_shared(key, blob)
                    frames[key, loc.offset] = content
                    if len(frames) > FRAMES_KEPT:
                        frames.popitem(last=False)
            if content is not None:
                # Its own bytes, as either kind of caller may keep it.
                raw = bytes(member(key, content, loc.at, loc.size))
            else:
                raw = decode(key, blob, loc.size)
            actual = digest(raw)
            if actual != cid:
                raise ChecksumMismatch(f"chunk {cid.hex()} in {key}", cid.hex(), actual.hex())
            yield cid, raw


def _runs(wanted: dict[bytes, Location]) -> list[list[tuple[bytes, Location]]]:
    """The chunks in pack order, cut into the ranges each read covers. Packs come in the
    order ``wanted`` first names them: a file's chunks, as uploaded, stay in their order."""
    rank: dict[str, int] = {}
    for loc in wanted.values():
        rank.setdefault(loc.pack, len(rank))
    ordered = sorted(wanted.items(), key=lambda item: (rank[item[1].pack], item[1].offset))
    runs: list[list[tuple[bytes, Location]]] = []
    run: list[tuple[bytes, Location]] = []
    for cid, loc in ordered:
        if run and not _extends(run, loc):
            runs.append(run)
            run = []
        run.append((cid, loc))
    if run:
        runs.append(run)
    return runs


def _extends(run: list[tuple[bytes, Location]], loc: Location) -> bool:
    """Whether ``loc`` is worth reading in the same range as ``run`` (sorted by offset)."""
    first = run[0][1]
    prev_end = max(run[-1][1].offset + run[-1][1].length, first.offset)
    return (
        loc.pack == first.pack
        and loc.offset - prev_end <= MAX_GAP
        and loc.offset + loc.length - first.offset <= MAX_READ
    )

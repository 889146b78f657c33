"""ChunkReader: reads chunks back from packs, coalescing neighbours into one range read."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from datamon.cafs.index import ChunkIndex, Location
from datamon.cafs.layout import pack_key
from datamon.core.codecs import ChunkCodec
from datamon.core.ids import digest
from datamon.core.model import ChunkRef
from datamon.errors import ChecksumMismatch, CorruptObject

# A window of chunks looked up and fetched together: at most this many chunks, and no more
# raw bytes than WINDOW_BYTES (beyond one chunk), whatever the store's chunk size.
WINDOW_CHUNKS = 128
WINDOW_BYTES = 8 << 20
MAX_READ = 8 << 20
MAX_GAP = 64 << 10


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
            where = self.index.lookup_many([r.id for r in window])
            missing = next((r for r in window if r.id not in where), None)
            if missing is not None:
                raise CorruptObject(f"chunk {missing.id.hex()}", "no pack in the store holds it")
            got = self._fetch({r.id: where[r.id] for r in window})
            for ref in window:
                yield got[ref.id]

    def _fetch(self, wanted: dict[bytes, Location]) -> dict[bytes, bytes]:
        ordered = sorted(wanted.items(), key=lambda item: (item[1].pack, item[1].offset))
        got: dict[bytes, bytes] = {}
        run: list[tuple[bytes, Location]] = []
        for cid, loc in ordered:
            if run and not _extends(run, loc):
                self._read_run(run, got)
                run = []
            run.append((cid, loc))
        if run:
            self._read_run(run, got)
        return got

    def _read_run(self, run: list[tuple[bytes, Location]], got: dict[bytes, bytes]) -> None:
        first = run[0][1]
        end = max(loc.offset + loc.length for _cid, loc in run)
        key = pack_key(first.pack)
        span = end - first.offset
        view = self.blob.get_range_view(key, first.offset, span)
        if len(view) < span:
            raise CorruptObject(key, f"truncated: wanted {span} bytes at {first.offset}")
        codec = self._codec()
        for cid, loc in run:
            at = loc.offset - first.offset
            raw = codec.decode(key, view[at : at + loc.length], loc.size)
            actual = digest(raw)
            if actual != cid:
                raise ChecksumMismatch(f"chunk {cid.hex()} in {key}", cid.hex(), actual.hex())
            got[cid] = raw


def _extends(run: list[tuple[bytes, Location]], loc: Location) -> bool:
    """Whether ``loc`` is worth reading in the same range as ``run`` (sorted by offset)."""
    first = run[0][1]
    prev_end = max(run[-1][1].offset + run[-1][1].length, first.offset)
    return (
        loc.pack == first.pack
        and loc.offset - prev_end <= MAX_GAP
        and loc.offset + loc.length - first.offset <= MAX_READ
    )

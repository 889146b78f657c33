"""Which kinds of small files an upload finds incompressible, so as not to compress them.

Files named alike tend to hold data alike: ``.jpg``, ``.parquet`` or ``.bin`` files of
compressed or random bytes, ``.json`` or ``.csv`` text. A chunk over 16 KiB can be probed by
compressing its start (design §4.5), but a small file is one short chunk: zstd would compress
it whole only to store it raw (W2's 25,000 random files of 1-16 KiB: 0.5 CPU-seconds here,
a tenth of the upload's CPU). So an upload learns, by the extension of each file's name,
whether the files of that kind compress: once :data:`RAW_RUN` of them in a row were stored
raw, it stores the next ones raw without compressing them, but for one in
:data:`CHECK_EVERY`, which it still compresses; one of those saving space makes the kind's
files compressed again (design §4.5). Files are learned from a group at a time: a group
with one file of a kind stored compressed starts that kind's count again, whatever the
order of its files. Data that would compress is never lost, only stored raw, and a chunk's
id is the hash of its raw bytes either way.

The kinds whose files compress are learned the same way, and their small files are then
compressed together, several to a frame (``CODEC_SHARED``, design §4.5), but for one in
:data:`CHECK_EVERY`, compressed alone to check the kind still compresses: a frame's outcome
says nothing of one file in it, and a random file in a frame of text would make the frame
larger. Files under :data:`LEARN_BYTES` always share frames.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from datamon.cafs.sources import open_source
from datamon.core.codecs import CODEC_RAW, PLAIN, SHARE, ChunkCodec

# Files of one kind in a row stored raw before the kind's files are no longer compressed.
RAW_RUN = 16
# Of a kind's files not compressed, one in this many is compressed still, to check.
CHECK_EVERY = 32
# Smaller files neither teach nor are kept raw: a frame's own bytes keep most of them from
# saving a 32nd, whatever their data, and compressing them costs little.
LEARN_BYTES = 512
# Of large files, the first bytes read to tell whether a file compresses, and how many files
# of a kind are read so; the kind's other files are taken to be like most of those.
HEAD_BYTES = 16 << 10
HEADS_A_KIND = 4


def kind_of(path: str, size: int = LEARN_BYTES) -> str | None:
    """The extension of the file's name, lowercased ("" for a name with none); None for a
    file under :data:`LEARN_BYTES`."""
    if size < LEARN_BYTES:
        return None
    head, dot, ext = path.rpartition(".")
    if not dot or "/" in ext or not head or head[-1] == "/":  # no dot, or only a leading one
        return ""
    return ext.lower()


class Kinds:
    """What one upload has learned of its kinds of files; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Files of each kind stored raw in a row, of those compressed.
        self._raw_run: dict[str, int] = {}
        # The kinds whose last file learned from was stored compressed.
        self._compresses: set[str] = set()
        # Files of each kind kept raw or shared since the last one compressed alone, to check.
        self._passed: dict[str, int] = {}

    def plan(self, files: Sequence[tuple[str, int]]) -> tuple[list[str | None], bytes | None]:
        """The kind of each ``(path, size)`` file and how to store it, a byte a file
        (``encode_group``'s marks): ``PLAIN``, raw without compressing it, for a kind that
        does not compress; ``SHARE``, in a frame with other such files, for a kind seen to
        compress and for tiny files; ``ALONE`` for the others, among them one file in
        :data:`CHECK_EVERY` of each kind otherwise kept raw or shared, to check that kind.
        None if every file is ``ALONE``."""
        kinds = [kind_of(path, size) for path, size in files]
        marks = bytearray(len(kinds))
        with self._lock:
            raw_run = self._raw_run
            compresses = self._compresses
            passed = self._passed
            for i, kind in enumerate(kinds):
                if kind is None:
                    marks[i] = SHARE
                    continue
                if raw_run.get(kind, 0) >= RAW_RUN:
                    mark = PLAIN
                elif kind in compresses:
                    mark = SHARE
                else:
                    continue
                n = passed.get(kind, 0) + 1
                if n < CHECK_EVERY:
                    marks[i] = mark
                else:
                    n = 0
                passed[kind] = n
        return kinds, bytes(marks) if any(marks) else None

    def learn(
        self,
        kinds: Sequence[str | None],
        plain: bytes | None,
        stored_raw: Sequence[bool | None],
    ) -> None:
        """What became of the files :meth:`plan` gave: ``stored_raw[i]`` tells whether the
        ``i``-th file's chunks were all stored raw, None if it had none; only the files
        ``plain`` (:meth:`plan`'s marks) marks ``ALONE`` tell something."""
        stored: dict[str, int] = {}
        compressed: set[str] = set()
        for i, (kind, raw) in enumerate(zip(kinds, stored_raw, strict=True)):
            if raw is None or kind is None or (plain is not None and plain[i]):
                continue
            if raw:
                stored[kind] = stored.get(kind, 0) + 1
            else:
                compressed.add(kind)
        with self._lock:
            raw_run = self._raw_run
            for kind in compressed:
                raw_run.pop(kind, None)
            self._compresses |= compressed
            for kind, n in stored.items():
                if kind not in compressed:
                    raw_run[kind] = raw_run.get(kind, 0) + n
                    self._compresses.discard(kind)


def chunk_marks(plain: bytes | None, counts: Sequence[int]) -> bytes | None:
    """``plain``'s byte a file as a byte a chunk, the ``i``-th file having ``counts[i]``."""
    if plain is None or (len(plain) == sum(counts) and min(counts, default=1) == 1):
        return plain  # (a chunk a file, the usual small file)
    marks = bytearray()
    for mark, count in zip(plain, counts, strict=True):
        marks += bytes((mark,)) * count
    return bytes(marks)


def outcomes(counts: Sequence[int], codecs: Sequence[int | None]) -> list[bool | None]:
    """For each file (``counts[i]`` of the chunks), whether its chunks were stored raw, from
    their codec bytes, None for a chunk not encoded: True if every chunk encoded was stored
    raw, False if one was compressed, None if none was encoded."""
    if len(counts) == len(codecs) and min(counts, default=1) == 1:  # a chunk a file
        return [None if codec is None else codec == CODEC_RAW for codec in codecs]
    out: list[bool | None] = []
    k = 0
    for count in counts:
        seen: bool | None = None
        for codec in codecs[k : k + count]:
            if codec is None:
                continue
            if codec != CODEC_RAW:
                seen = False
                break
            seen = True
        out.append(seen)
        k += count
    return out


def heads_compress(paths: Sequence[str], codec: ChunkCodec) -> list[bool]:
    """Whether each file's first :data:`HEAD_BYTES` compress by the margin a stored chunk
    must, read for the first :data:`HEADS_A_KIND` files of each kind; each other file is
    taken to be like most of those of its kind (a tie: compressing). A file that cannot be
    read counts as not compressing (reading it again, its upload reports why)."""
    verdicts: dict[str, list[bool]] = {}
    out: list[bool | None] = []
    for path in paths:
        kind = kind_of(path) or ""
        seen = verdicts.setdefault(kind, [])
        if len(seen) < HEADS_A_KIND:
            seen.append(_head_compresses(path, codec))
            out.append(seen[-1])
        else:
            out.append(None)
    majority = {kind: 2 * sum(seen) >= len(seen) for kind, seen in verdicts.items()}
    return [
        majority[kind_of(path) or ""] if verdict is None else verdict
        for path, verdict in zip(paths, out, strict=True)
    ]


def _head_compresses(path: str, codec: ChunkCodec) -> bool:
    try:
        fd = open_source(path)
    except OSError:
        return False
    try:
        head = os.read(fd, HEAD_BYTES)
    except OSError:
        return False
    finally:
        os.close(fd)
    return codec.compresses(head)

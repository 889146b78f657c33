"""StatCache: remembers the chunks of local files, so an unchanged file is not read again.

A file is taken as unchanged when its size, mtime, ctime and inode all match what was
recorded; files modified less than two seconds before they were read are never recorded,
because a further write in the same clock tick could leave those fields unchanged.

Each row also names the packs that hold the file's chunks. Rows are recorded only once those
packs are durable in the store, so a reader may reuse a row without looking its chunks up,
provided every pack it names is still in the chunk index copy (see docs/design.md §9).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import msgspec

from datamon.cafs.sqlitedb import LocalDB, transaction
from datamon.core.filestat import StatLike
from datamon.core.model import ChunkRef

# Bumped whenever the meaning of a row changes: older tables are dropped, not migrated.
_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER,
    chunks BLOB, packs BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS folders (
    path TEXT PRIMARY KEY, key BLOB, folder BLOB, packs BLOB
) WITHOUT ROWID;
"""
# How long before an upload began reading a file's mtime and ctime must be for its row to be
# recorded: a later write within the file system's timestamp granularity (plus the kernel's
# coarse-clock tick) could otherwise leave the stat unchanged. Whole-second times (FAT keeps
# 2 s) take RACY_NS; times with a sub-second part prove finer timestamps, which take
# RACY_FINE_NS (ext4, XFS and btrfs keep nanoseconds; exFAT 10 ms; a tick is at most 10 ms).
RACY_NS = 2_000_000_000
RACY_FINE_NS = 100_000_000
_SECOND_NS = 1_000_000_000
_BATCH = 500
# Rows encoded and inserted at a time.
_ROWS = 10_000
_encoder = msgspec.msgpack.Encoder()
_chunks_decoder = msgspec.msgpack.Decoder(tuple[ChunkRef, ...])
_packs_decoder = msgspec.msgpack.Decoder(tuple[str, ...])


class Folder(msgspec.Struct, array_like=True, frozen=True):
    """What an upload needs of an unchanged folder: its tree and what lies below it."""

    tree: bytes
    size: int
    files: int
    chunks: int


_folder_decoder = msgspec.msgpack.Decoder(Folder)


def _any_packs(_packs: tuple[str, ...]) -> bool:
    return True


class Settled:
    """Whether a file whose times are ``mtime`` and ``ctime`` (ns), read from ``read_at``
    on, may be recorded: its last change must be older than the racy window (see above)."""

    __slots__ = ("_coarse_cut", "_fine_cut")

    def __init__(self, read_at: int) -> None:
        self._fine_cut = read_at - RACY_FINE_NS
        self._coarse_cut = read_at - RACY_NS

    def __call__(self, mtime: int, ctime: int) -> bool:
        changed = mtime if mtime > ctime else ctime
        fine = mtime % _SECOND_NS or ctime % _SECOND_NS
        return changed <= (self._fine_cut if fine else self._coarse_cut)


def _key(st: StatLike) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class StatCache:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._db = LocalDB(db_path, "OFF")
        self._db.ensure_schema(_VERSION, _SCHEMA, ("files", "folders"))

    def get_many(
        self,
        files: Sequence[tuple[str, StatLike]],
        trusted: Callable[[tuple[str, ...]], bool] = _any_packs,
        packs: dict[str, tuple[str, ...]] | None = None,
    ) -> dict[str, tuple[ChunkRef, ...]]:
        """The recorded chunks of those ``(path, stat)`` that are unchanged, when the packs
        their row names are ``trusted``: asked once per distinct set of packs (the rows of
        a tree share a few), with the pack ids sorted. ``packs``, if given, receives the
        packs of each file found.

        Files are usually given in path order, neighbours in one folder, so one range scan
        from the smallest to the largest path finds them all; when the range holds many
        other rows, the rest are looked up by name.
        """
        wanted = dict(files)
        if not wanted:
            return {}
        found: dict[str, tuple[ChunkRef, ...]] = {}
        db = self._db.get()
        limit = 2 * len(wanted) + 64
        rows = db.execute(
            "SELECT path, size, mtime_ns, ctime_ns, ino, chunks, packs FROM files"
            " WHERE path >= ? AND path <= ? LIMIT ?",
            (min(wanted), max(wanted), limit),
        ).fetchall()
        verdicts: dict[bytes, tuple[str, ...] | None] = {}
        out = {} if packs is None else packs
        self._match(rows, wanted, found, out, verdicts, trusted)
        if len(rows) >= limit:
            seen = {row[0] for row in rows}
            rest = [path for path in wanted if path not in seen]
            for start in range(0, len(rest), _BATCH):
                batch = rest[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                more = db.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, ino, chunks, packs FROM files"
                    f" WHERE path IN ({marks})",
                    batch,
                ).fetchall()
                self._match(more, wanted, found, out, verdicts, trusted)
        return found

    @staticmethod
    def _match(
        rows: list[tuple[str, int, int, int, int, bytes, bytes | None]],
        wanted: dict[str, StatLike],
        found: dict[str, tuple[ChunkRef, ...]],
        packs_of: dict[str, tuple[str, ...]],
        verdicts: dict[bytes, tuple[str, ...] | None],
        trusted: Callable[[tuple[str, ...]], bool],
    ) -> None:
        """Add the chunks (and packs) of the rows that match their file's stat and name
        trusted packs."""
        for path, size, mtime_ns, ctime_ns, ino, chunks, packs in rows:
            st = wanted.get(path)
            if st is None or _key(st) != (size, mtime_ns, ctime_ns, ino) or packs is None:
                continue
            try:
                refs = _chunks_decoder.decode(chunks)
            except msgspec.DecodeError:
                continue
            names = _judge(packs, verdicts, trusted)
            if names is not None:
                found[path] = refs
                packs_of[path] = names

    def get_folders(
        self,
        folders: Sequence[tuple[str, bytes]],
        trusted: Callable[[tuple[str, ...]], bool] = _any_packs,
    ) -> dict[str, tuple[Folder, tuple[str, ...]]]:
        """The recorded :class:`Folder` and packs of those ``(path, key)`` whose key is
        unchanged and whose packs are ``trusted`` (asked once per distinct set): one range
        scan."""
        wanted = dict(folders)
        if not wanted:
            return {}
        rows = (
            self._db.get()
            .execute(
                "SELECT path, key, folder, packs FROM folders WHERE path >= ? AND path <= ?",
                (min(wanted), max(wanted)),
            )
            .fetchall()
        )
        verdicts: dict[bytes, tuple[str, ...] | None] = {}
        found: dict[str, tuple[Folder, tuple[str, ...]]] = {}
        for path, key, folder, packs in rows:
            if wanted.get(path) != key:
                continue
            names = _judge(packs, verdicts, trusted)
            if names is None:
                continue
            try:
                found[path] = _folder_decoder.decode(folder), names
            except msgspec.DecodeError:
                continue
        return found

    def put_folders(self, folders: Iterable[tuple[str, bytes, Folder, Collection[str]]]) -> int:
        """Record ``(path, key, folder, packs)``; returns how many.

        The folder's tree, and every tree below it, MUST already be durable in the store, and
        so MUST the packs (design §9).
        """
        encode = _encoder.encode
        rows = [
            (path, key, encode(folder), encode(sorted(set(packs))))
            for path, key, folder, packs in folders
        ]
        if rows:
            with transaction(self._db.get(), "DEFERRED") as db:
                db.executemany("INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def put_many(
        self,
        files: Iterable[tuple[str, StatLike, tuple[ChunkRef, ...], Collection[str]]],
        read_at: int | None = None,
        durable: Future[None] | None = None,
    ) -> int:
        """Record ``(path, stat, chunks, packs)`` in one transaction; returns how many.

        The packs MUST be durable in the store before the rows are committed: already, or
        once ``durable`` is done. The rows are inserted meanwhile, and the transaction is
        committed only then (rolled back if ``durable`` fails), so no reader, and no crash,
        ever sees a row naming a pack that is not durable. Files changed too shortly before
        ``read_at`` (when reading them began, in ``time.time_ns()``; now if not given) are
        skipped: see :class:`Settled`. Rows are encoded and inserted a slice at a time, so a
        tree of a million files never holds all its encoded rows at once.
        """
        now = time.time_ns() if read_at is None else read_at
        rows = _rows(files, now)
        count = 0
        with transaction(self._db.get(), "DEFERRED") as db:
            while batch := list(itertools.islice(rows, _ROWS)):
                db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
                count += len(batch)
            if durable is not None:
                durable.result()
        return count

    def release(self) -> None:
        """Close the calling thread's connection (see ``LocalDB.release``)."""
        self._db.release()

    def close(self) -> None:
        self._db.close()


def _judge(
    packs: bytes,
    verdicts: dict[bytes, tuple[str, ...] | None],
    trusted: Callable[[tuple[str, ...]], bool],
) -> tuple[str, ...] | None:
    """The pack ids of an encoded ``packs`` value if trusted, else None; each distinct value
    is decoded and judged once (``verdicts`` remembers)."""
    if packs in verdicts:
        return verdicts[packs]
    try:
        names: tuple[str, ...] | None = _packs_decoder.decode(packs)
    except msgspec.DecodeError:
        names = None
    verdicts[packs] = names = names if names is not None and trusted(names) else None
    return names


def _rows(
    files: Iterable[tuple[str, StatLike, tuple[ChunkRef, ...], Collection[str]]], now: int
) -> Iterator[tuple[str, int, int, int, int, bytes, bytes]]:
    """The table rows of the files :class:`Settled` at ``now``."""
    encode = _encoder.encode
    ok = Settled(now)
    for path, st, chunks, packs in files:
        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
        if not ok(mtime, ctime):
            continue
        yield path, st.st_size, mtime, ctime, st.st_ino, encode(chunks), encode(sorted(set(packs)))

"""StatCache: remembers the chunks of local files, so an unchanged file is not read again.

A file is taken as unchanged when its size, mtime, ctime and inode all match what was
recorded; files modified too shortly before they were read are never recorded (see
:class:`Settled`), because a further write in the same clock tick could leave those fields
unchanged.

One row holds the files of one folder, so recording a tree costs a row per folder, not per
file. Each file also names the packs that hold its chunks. Rows are recorded only once those
packs are durable in the store, so a reader may reuse a file's chunk list without looking
its chunks up, provided every pack the file names is still in the chunk index copy (see
docs/design.md §9).
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Collection, Container, Hashable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Generic, TypeVar

import msgspec

from datamon.cafs.sqlitedb import LocalDB, insert_rows, transaction
from datamon.core.filestat import StatLike
from datamon.core.model import ChunkRef

# Bumped whenever the meaning of a row changes: older tables are dropped, not migrated.
_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    folder TEXT PRIMARY KEY, entries BLOB, packs BLOB
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
# A files row holds a folder's whole listing (40 KB for 1,000 files): fewer to a statement.
FILES_ROWS = 16
# Files recorded at a time: their folders' rows are read, merged and written together.
_ROWS = 10_000
_encoder = msgspec.msgpack.Encoder()
_sets_decoder = msgspec.msgpack.Decoder(tuple[tuple[str, ...], ...])
_packs_decoder = msgspec.msgpack.Decoder(tuple[str, ...])


class _File(msgspec.Struct, array_like=True, frozen=True):
    """One file of a folder's row: its name, the stat it had when read, its chunks, and
    which of the row's sets of packs holds them."""

    name: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    chunks: tuple[ChunkRef, ...]
    packs: int


_files_decoder = msgspec.msgpack.Decoder(tuple[_File, ...])
_Row = tuple[str, bytes, bytes]
# A file as a row holds it: name, size, mtime_ns, ctime_ns, ino, chunks, and the position of
# its set of packs in the row's.
_Entry = tuple[str, int, int, int, int, tuple[ChunkRef, ...], int]
# The names of the files in a folder (its path with a trailing "/") now, or None if unknown.
Listed = Callable[[str], Container[str] | None]
# A folder's files to record, by name, and the numbers of their sets of packs.
_Pending = tuple[dict[str, _Entry], dict[tuple[str, ...], int]]


# How a caller of PreparedRows names a file's packs until they are known.
K = TypeVar("K", bound=Hashable)


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
        others: set[str] | None = None,
    ) -> dict[str, tuple[ChunkRef, ...]]:
        """The recorded chunks of those ``(path, stat)`` that are unchanged, when the packs
        their row names are ``trusted``: asked once per distinct set of packs (the files of
        a tree share a few), with the pack ids sorted. ``packs``, if given, receives the
        packs of each file found; ``others``, the folders whose row holds a file not asked
        for (perhaps deleted: see ``recheck`` in :meth:`put_many`).

        A row holds the files of one folder; the rows of the folders of ``files`` are read
        as one range scan, or by name when the range holds many others.
        """
        wanted = dict(files)
        if not wanted:
            return {}
        found: dict[str, tuple[ChunkRef, ...]] = {}
        out = {} if packs is None else packs
        verdicts: dict[tuple[str, ...], bool] = {}
        # A file's folder: its path up to and with the last "/".
        folders = {path[: path.rfind("/") + 1] for path in wanted}
        for folder, entries, sets in _read(self._db.get(), folders):
            try:
                names = _sets_decoder.decode(sets)
                recorded = _files_decoder.decode(entries)
            except (msgspec.DecodeError, TypeError):  # not MessagePack, or not even bytes
                continue
            for f in recorded:
                path = folder + f.name
                st = wanted.get(path)
                if st is None:
                    if others is not None:
                        others.add(folder)
                    continue
                if _key(st) != (f.size, f.mtime_ns, f.ctime_ns, f.ino):
                    continue
                if not 0 <= f.packs < len(names):
                    continue
                which = names[f.packs]
                verdict = verdicts.get(which)
                if verdict is None:
                    verdict = verdicts[which] = trusted(which)
                if verdict:
                    found[path] = f.chunks
                    out[path] = which
        return found

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

    def folder_files(self, path: str) -> int | None:
        """How many files were below the folder ``path`` (with its trailing "/") when its
        row was recorded; None if it has none."""
        found = self._db.get().execute("SELECT folder FROM folders WHERE path = ?", (path,))
        row = found.fetchone()
        return None if row is None else _folder_decoder.decode(row[0]).files

    def has_files_below(self, path: str) -> bool:
        """Whether a file is recorded in the folder ``path`` (with its trailing "/") or in a
        folder below it."""
        below = (path, path[:-1] + "0")  # keys from "path/" up to, not including, "path0"
        found = self._db.get().execute(
            "SELECT 1 FROM files WHERE folder >= ? AND folder < ? LIMIT 1", below
        )
        return found.fetchone() is not None

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
                insert_rows(db, "INSERT OR REPLACE INTO folders", 4, rows)
        return len(rows)

    def put_rows(
        self, rows: Iterable[tuple[str, bytes | None, bytes]], durable: Future[None] | None = None
    ) -> None:
        """Replace the rows of folders whole with ``(folder, entries, packs)`` as
        :class:`PreparedRows` encodes them; entries of None delete the folder's row.

        As with :meth:`put_many`, the packs MUST be durable before the rows are committed:
        already, or once ``durable`` is done (the rows are written meanwhile).
        """
        items = iter(rows)
        first = next(items, None)
        if first is None:
            # Nothing to write (an unchanged tree taken whole): no write lock for that.
            return
        items = itertools.chain((first,), items)
        with transaction(self._db.get()) as db:
            while batch := list(itertools.islice(items, _BATCH)):
                kept = [row for row in batch if row[1] is not None]
                insert_rows(db, "INSERT OR REPLACE INTO files", 3, kept, FILES_ROWS)
                db.executemany(
                    "DELETE FROM files WHERE folder = ?",
                    [(row[0],) for row in batch if row[1] is None],
                )
            if durable is not None:
                durable.result()

    def put_many(
        self,
        files: Iterable[tuple[str, StatLike, tuple[ChunkRef, ...], Collection[str]]],
        read_at: int | None = None,
        durable: Future[None] | None = None,
        listed: Listed | None = None,
        recheck: Iterable[str] = (),
    ) -> int:
        """Record ``(path, stat, chunks, packs)`` in one transaction; returns how many.

        The packs MUST be durable in the store before the rows are committed: already, or
        once ``durable`` is done. The rows are written meanwhile, and the transaction is
        committed only then (rolled back if ``durable`` fails), so no reader, and no crash,
        ever sees a row naming a pack that is not durable. Files changed too shortly before
        ``read_at`` (when reading them began, in ``time.time_ns()``; now if not given) are
        skipped: see :class:`Settled`. A file joins the row of its folder, replacing a file
        of the same name; the others recorded there stay. Files are taken a slice at a
        time, and a folder's row is written once a slice has none of its files, so a tree
        of a million files never holds all its rows at once. ``listed``, if given, tells the
        names of the files a folder holds now (None when not known): a file of its row
        that is not among them is dropped, so a row does not keep deleted files. The rows of
        the folders in ``recheck`` are checked so too, though no file of theirs is recorded
        (a folder whose only change is a deleted file).
        """
        ok = Settled(time.time_ns() if read_at is None else read_at)
        sets: dict[frozenset[str], tuple[str, ...]] = {}
        count = 0
        items = iter(files)
        # Each folder's new files by name, as its row holds them, and its sets of packs.
        pending: dict[str, _Pending] = {}
        written: set[str] = set()
        with transaction(self._db.get()) as db:
            while batch := list(itertools.islice(items, _ROWS)):
                touched: set[str] = set()
                for path, st, chunks, packs in batch:
                    mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
                    if not ok(mtime, ctime):
                        continue
                    names = sets.get(packs) if isinstance(packs, frozenset) else None
                    if names is None:
                        names = tuple(sorted(set(packs)))
                        if isinstance(packs, frozenset):
                            sets[packs] = names
                    cut = path.rfind("/") + 1  # the folder, with its "/", and the name
                    folder = path[:cut]
                    row = pending.get(folder)
                    if row is None:
                        row = pending[folder] = ({}, {})
                    touched.add(folder)
                    which = row[1].setdefault(names, len(row[1]))
                    name = path[cut:]
                    row[0][name] = (name, st.st_size, mtime, ctime, st.st_ino, chunks, which)
                # Files come in about path order: a folder none of this slice's files is in
                # is written now, the others once no more of their files come (so a folder
                # of a million files is written once, not once a slice).
                done = {f: pending.pop(f) for f in list(pending) if f not in touched}
                written.update(done)
                count += _write(db, done, listed)
            written.update(pending)
            count += _write(db, pending, listed)
            if listed is not None:
                _drop_unlisted(db, [f for f in recheck if f not in written], listed)
            if durable is not None:
                durable.result()
        return count

    def forget(self, paths: Iterable[str]) -> int:
        """Drop what the cache holds of ``paths`` (absolute, without a trailing slash),
        which are gone from disk: the file of that name in its folder's row, and the rows of
        every folder at or below it. Returns how many rows changed or went.

        Only a cost saving is lost if this is not called: a file's entry is used only for a
        file found at its path with the same stat.
        """
        changed = 0
        with transaction(self._db.get()) as db:
            for path in paths:
                cut = path.rfind("/") + 1
                folder, name = path[:cut], path[cut:]
                found = db.execute(
                    "SELECT entries FROM files WHERE folder = ?", (folder,)
                ).fetchone()
                if found is not None and _keep_files(db, folder, found[0], name.__ne__):
                    changed += 1
                # The folder's own rows and those below: keys from "path/" up to, not
                # including, "path0" ("0" follows "/").
                below = (path + "/", path + "0")
                for table, column in (("files", "folder"), ("folders", "path")):
                    changed += db.execute(
                        f"DELETE FROM {table} WHERE {column} >= ? AND {column} < ?", below
                    ).rowcount
        return changed

    def forget_folders(self, root: str) -> int:
        """Drop the ``folders`` rows of ``root`` (a folder path with its trailing "/"), of
        every folder below it and of every folder above it; returns how many went. The
        ``files`` rows stay. For an upload that trusts nothing recorded (``reread``): a row
        left above or beside what it reads would still hand a later upload the old tree."""
        above = [(root[: i + 1],) for i, char in enumerate(root[:-1]) if char == "/"]
        with transaction(self._db.get()) as db:
            gone = db.execute(
                "DELETE FROM folders WHERE path >= ? AND path < ?", (root, root[:-1] + "0")
            ).rowcount
            for row in above:
                gone += db.execute("DELETE FROM folders WHERE path = ?", row).rowcount
        return gone

    def prune(self, root: str, present: Container[str]) -> int:
        """Delete the ``files`` and ``folders`` rows of the folders below ``root`` (a folder
        path with its trailing "/"), at any depth, that are not ``present``: folders gone from
        disk since they were recorded. Returns how many rows went."""
        below = (root, root[:-1] + "0")  # keys after "root/", before "root0"
        db = self._db.get()
        stale: dict[tuple[str, str], list[tuple[str]]] = {}
        for table, column in (("files", "folder"), ("folders", "path")):
            # One row (the paths joined by NUL, which no path holds), not one row a folder:
            # each row fetched lets go of the interpreter lock, and the upload's other threads
            # took it meanwhile (1,111 folders: up to 0.9 s, after the commit).
            (joined,) = db.execute(
                f"SELECT group_concat({column}, char(0)) FROM {table}"
                f" WHERE {column} > ? AND {column} < ?",
                below,
            ).fetchone()
            paths = joined.split("\0") if joined else []
            stale[table, column] = [(path,) for path in paths if path not in present]
        if any(stale.values()):  # the write lock only if there is something to delete
            with transaction(db):
                for (table, column), rows in stale.items():
                    db.executemany(f"DELETE FROM {table} WHERE {column} = ?", rows)
        return sum(map(len, stale.values()))

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


def _read(db: sqlite3.Connection, folders: Collection[str]) -> list[_Row]:
    """The ``files`` rows of ``folders``: one range scan from the first to the last, unless
    the range holds many other folders; then the rest are read by name."""
    if not folders:
        return []
    limit = 2 * len(folders) + 64
    rows: list[_Row] = db.execute(
        "SELECT folder, entries, packs FROM files WHERE folder >= ? AND folder <= ? LIMIT ?",
        (min(folders), max(folders), limit),
    ).fetchall()
    out = [row for row in rows if row[0] in folders]
    if len(rows) >= limit:
        seen = {row[0] for row in rows}
        rest = [folder for folder in folders if folder not in seen]
        for start in range(0, len(rest), _BATCH):
            batch = rest[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            out += db.execute(
                f"SELECT folder, entries, packs FROM files WHERE folder IN ({marks})", batch
            ).fetchall()
    return out


def _write(db: sqlite3.Connection, folders: dict[str, _Pending], listed: Listed | None) -> int:
    """Write the rows of ``folders``, each merged with its stored row; returns how many files
    they gained or replaced."""
    if not folders:
        return 0
    old = {row[0]: (row[1], row[2]) for row in _read(db, folders)}
    rows = [
        _merge(folder, new, index, old.get(folder), listed)
        for folder, (new, index) in folders.items()
    ]
    insert_rows(db, "INSERT OR REPLACE INTO files", 3, rows, FILES_ROWS)
    return sum(len(new) for new, _index in folders.values())


def _keep_files(
    db: sqlite3.Connection, folder: str, entries: bytes, keep: Callable[[str], bool]
) -> bool:
    """Rewrite ``folder``'s row (its ``entries``) with only the files whose name ``keep``
    accepts; a row left with none, or that does not decode, is deleted. Whether it changed."""
    try:
        files = _files_decoder.decode(entries)
    except (msgspec.DecodeError, TypeError):
        files = ()
    kept = [f for f in files if keep(f.name)]
    if len(kept) == len(files) and files:
        return False
    if kept:
        db.execute("UPDATE files SET entries = ? WHERE folder = ?", (_encoder.encode(kept), folder))
    else:
        db.execute("DELETE FROM files WHERE folder = ?", (folder,))
    return True


def _drop_unlisted(db: sqlite3.Connection, folders: Sequence[str], listed: Listed) -> None:
    """Rewrite the rows of ``folders`` without their files that are not ``listed`` now;
    rows of folders not listed are left as they are."""
    known: dict[str, Container[str]] = {}
    for folder in folders:
        names = listed(folder)
        if names is not None:
            known[folder] = names
    for folder, entries, _sets in _read(db, list(known)):
        _keep_files(db, folder, entries, known[folder].__contains__)


def _merge(
    folder: str,
    new: dict[str, _Entry],
    index: dict[tuple[str, ...], int],
    old: tuple[bytes, bytes] | None,
    listed: Listed | None,
) -> _Row:
    """The row of ``folder``: its ``new`` files (whose sets of packs ``index`` numbers) and
    the files of its ``old`` row that are not among them and are ``listed`` in the folder
    now, if that is known (none if that row does not decode)."""
    entries = list(new.values())
    if old is not None:
        try:
            kept = _files_decoder.decode(old[0])
            names = _sets_decoder.decode(old[1])
        except (msgspec.DecodeError, TypeError):
            kept, names = (), ()
        present = listed(folder) if listed is not None else None
        for f in kept:
            if f.name in new or not 0 <= f.packs < len(names):
                continue
            if present is not None and f.name not in present:
                continue
            which = index.setdefault(names[f.packs], len(index))
            entries.append((f.name, f.size, f.mtime_ns, f.ctime_ns, f.ino, f.chunks, which))
    return folder, _encoder.encode(entries), _encoder.encode(list(index))


class PreparedRows(Generic[K]):
    """The rows of the folders of a full upload, encoded as each folder's files are read and
    written once the packs are durable, so that an upload does not hold a million files'
    objects until it commits, only one encoded row a folder.

    A folder's ``files`` row is its whole listing (files changed too recently to trust left
    out: :class:`Settled`), replacing the row recorded before, so files deleted since leave
    it. Each file names its packs by a key of the caller's (``K``), turned into pack ids at
    the end (``resolve``): the packs an upload writes are named only once written. Not
    thread-safe: one thread adds, then one writes.
    """

    def __init__(self, read_at: int) -> None:
        self._settled = Settled(read_at)
        # folder, its files encoded (None: no file to record), how many, their keys by index
        self._files: list[tuple[str, bytes | None, int, list[K]]] = []
        self._folders: list[tuple[str, bytes, Folder, Collection[K]]] = []

    def add_files(
        self, folder: str, files: Iterable[tuple[str, StatLike, tuple[ChunkRef, ...], K]]
    ) -> None:
        """Record the files of ``folder`` (its path with a trailing "/"): ``(name, stat,
        chunks, packs key)``, every file it holds."""
        ok = self._settled
        index: dict[K, int] = {}
        entries: list[_Entry] = []
        for name, st, chunks, key in files:
            mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
            if ok(mtime, ctime):
                which = index.setdefault(key, len(index))
                entries.append((name, st.st_size, mtime, ctime, st.st_ino, chunks, which))
        encoded = _encoder.encode(entries) if entries else None
        self._files.append((folder, encoded, len(entries), list(index)))

    def add_folder(self, path: str, key: bytes, folder: Folder, packs: Collection[K]) -> None:
        """Record a folder reusable whole (``StatCache.put_folders``): ``packs`` are the keys
        of every file below it."""
        self._folders.append((path, key, folder, packs))

    def write_files(
        self,
        cache: StatCache,
        resolve: Callable[[K], tuple[str, ...] | None],
        durable: Future[None] | None = None,
    ) -> int:
        """Write the ``files`` rows (see ``StatCache.put_rows`` for ``durable``); returns how
        many files they hold. ``resolve`` gives a key's pack ids, sorted, or None when they
        are not all written: such files are left out."""
        count = 0
        resolve = _memo(resolve)

        def rows() -> Iterable[tuple[str, bytes | None, bytes]]:
            nonlocal count
            for folder, entries, n, keys in self._files:
                sets = [resolve(key) for key in keys]
                if entries is not None and None in sets:
                    entries, n = _without_unresolved(entries, sets)
                count += n
                yield folder, entries, _encoder.encode([s or () for s in sets])

        cache.put_rows(rows(), durable)
        return count

    def write_folders(
        self, cache: StatCache, resolve: Callable[[K], tuple[str, ...] | None]
    ) -> int:
        """Write the folder rows whose packs all resolve; returns how many. The trees MUST
        be durable (``StatCache.put_folders``)."""
        resolve = _memo(resolve)

        def rows() -> Iterable[tuple[str, bytes, Folder, Collection[str]]]:
            for path, key, folder, keys in self._folders:
                held: set[str] = set()
                for k in keys:
                    names = resolve(k)
                    if names is None:
                        break
                    held.update(names)
                else:
                    yield path, key, folder, held

        return cache.put_folders(rows())


def _memo(resolve: Callable[[K], tuple[str, ...] | None]) -> Callable[[K], tuple[str, ...] | None]:
    """``resolve``, asked once per key."""
    known: dict[K, tuple[str, ...] | None] = {}

    def cached(key: K) -> tuple[str, ...] | None:
        if key in known:
            return known[key]
        names = known[key] = resolve(key)
        return names

    return cached


def _without_unresolved(
    entries: bytes, sets: Sequence[tuple[str, ...] | None]
) -> tuple[bytes | None, int]:
    """A row's encoded files without those whose set of packs is None; and how many."""
    kept = [f for f in _files_decoder.decode(entries) if sets[f.packs] is not None]
    return (_encoder.encode(kept) if kept else None), len(kept)

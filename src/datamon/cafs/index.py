"""The chunk index: which pack holds each chunk.

The authoritative index is the set of pack index objects in the blob location,
one per pack. Each machine keeps a SQLite copy under its cache folder so that a
store of tens of millions of chunks is never held in memory; :meth:`ChunkIndex.sync`
brings the copy up to date by listing the pack indexes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from datamon.cafs.layout import INDEX, index_key, pack_id_of
from datamon.cafs.sqlitedb import LocalDB, insert_rows, transaction
from datamon.core.codecs import decode_frame, load_versioned
from datamon.core.model import PACK_INDEX_FORMATS, PackEntry, PackIndex
from datamon.errors import CorruptObject, ObjectNotFound, PackMissing
from datamon.storage.base import Backend

# Bumped whenever the tables change: tables of another version are dropped, not migrated (the
# next sync or ensure loads the pack indexes again from the store).
_VERSION = 2
# A chunk row names its pack by the pack's row number, not its 64-character id: rows of half
# the size made recording 47,000 chunks take half the time here.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (n INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, size INTEGER NOT NULL, at INTEGER NOT NULL
) WITHOUT ROWID
"""
# A chunk's location: what follows SELECT (the chunk id may go first) up to the WHERE.
_LOCATION = (
    "p.id, c.offset, c.length, c.size, c.at FROM chunks AS c JOIN packs AS p ON p.n = c.pack"
)
_BATCH = 500
# Pack indexes loaded and recorded per transaction by a sync.
_RECORD = 64


_Row = tuple[bytes, int, int, int, int, int]


class Location(NamedTuple):
    pack: str
    offset: int
    length: int
    size: int
    at: int = 0  # in a shared frame, where the chunk starts in its content


def load_pack_index(blob: Backend, pack_id: str) -> PackIndex:
    key = index_key(pack_id)
    try:
        data = blob.get(key)
    except ObjectNotFound:
        raise PackMissing(key, pack_id) from None
    index = load_versioned(key, decode_frame(key, data), PackIndex, PACK_INDEX_FORMATS, True)
    if index.pack != pack_id:
        raise CorruptObject(key, f"describes pack {index.pack}")
    return index


class ChunkIndex:
    def __init__(self, blob: Backend, db_path: Path) -> None:
        self.blob = blob
        self.db_path = db_path
        self._db = LocalDB(db_path, "NORMAL")
        self._db.ensure_schema(_VERSION, _SCHEMA, ("chunks", "packs"))

    def close(self) -> None:
        self._db.close()

    def known_packs(self) -> set[str]:
        return {row[0] for row in self._db.get().execute("SELECT id FROM packs")}

    def sync(self) -> int:
        """Match the local copy to the pack indexes in the store; returns how many were loaded.

        The copy keeps one location a chunk, the first recorded, though racing uploads can
        store a chunk in two packs. So when a pack has left the store (deleted by hand, or
        by a rule of the bucket), the rows of its chunks go, and the indexes of every pack
        still there are recorded again: rows the copy has stay as they are, and a chunk the
        pack that left shared with another is found there, not reported missing. Packs
        leave a store seldom; which of their chunks others hold is known only from those
        others' indexes. The pack that left stays listed as known until that is done, so a
        sync cut short does it all again the next time. A pack whose index goes between the
        listing and its loading has left too, and is skipped.
        """
        present = {pack_id_of(k) for k in self.blob.list(INDEX)}
        known = self.known_packs()
        gone = known - present
        if gone:
            self._forget(gone, keep_listed=True)
            known = set()  # (every present pack recorded again: rows already there stay)
        missing = sorted(present - known)
        loaded = 0
        for start in range(0, len(missing), _RECORD):
            batch = missing[start : start + _RECORD]
            # Loaded first: the write lock is not held across downloads.
            indexes = [found for found in map(self._load_listed, batch) if found is not None]
            self.record_many(indexes)
            loaded += len(indexes)
        if gone:
            self._forget(gone)
        return loaded

    def _load_listed(self, pack_id: str) -> PackIndex | None:
        try:
            return load_pack_index(self.blob, pack_id)
        except PackMissing:
            return None

    def ensure(self, pack_ids: Iterable[str]) -> None:
        """Load the indexes of these packs if this machine has not seen them."""
        known = self.known_packs()
        for pack_id in pack_ids:
            if pack_id not in known:
                self.record(load_pack_index(self.blob, pack_id))

    def record(self, index: PackIndex) -> None:
        self.record_many([index])

    def record_many(self, indexes: Iterable[PackIndex]) -> None:
        """Record pack indexes in one transaction.

        Chunk ids are random, so each pack's rows land on as many pages of the table as it
        has chunks: one commit per pack rewrote most of those pages into the write-ahead log
        again and again (58,000 page writes for 18 packs of 50,000 small files). The rows of
        all the packs go in in id order, so that neighbouring rows share pages.
        """
        with transaction(self._db.get()) as db:
            numbered: list[Iterator[_Row]] = []
            for index in indexes:
                db.execute("INSERT OR IGNORE INTO packs (id) VALUES (?)", (index.pack,))
                (n,) = db.execute("SELECT n FROM packs WHERE id = ?", (index.pack,)).fetchone()
                numbered.append(_rows(n, sorted(index.entries, key=_entry_id)))
            # Merged lazily, one row at a time: the rows of a pack of 500,000 tiny chunks
            # held as tuples took 42 MiB. Stable: of two rows of one chunk, the one recorded
            # first is kept.
            if not numbered:
                return
            rows = numbered[0] if len(numbered) == 1 else heapq.merge(*numbered, key=_chunk_id)
            insert_rows(db, "INSERT OR IGNORE INTO chunks", 6, rows)

    def _forget(self, packs: set[str], keep_listed: bool = False) -> None:
        """Remove the rows of these packs' chunks, and the packs' own rows unless
        ``keep_listed``."""
        with transaction(self._db.get()) as db:
            for pack_id in packs:
                row = db.execute("SELECT n FROM packs WHERE id = ?", (pack_id,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM chunks WHERE pack = ?", row)
                    if not keep_listed:
                        db.execute("DELETE FROM packs WHERE n = ?", row)

    def lookup(self, cid: bytes) -> Location | None:
        row = self._db.get().execute(f"SELECT {_LOCATION} WHERE c.id = ?", (cid,)).fetchone()
        return Location(*row) if row else None

    def lookup_many(self, cids: Sequence[bytes]) -> dict[bytes, Location]:
        found: dict[bytes, Location] = {}
        db = self._db.get()
        for start in range(0, len(cids), _BATCH):
            batch = list(set(cids[start : start + _BATCH]))
            marks = ",".join("?" * len(batch))
            rows = db.execute(f"SELECT c.id, {_LOCATION} WHERE c.id IN ({marks})", batch)
            for row in rows:
                found[row[0]] = Location(*row[1:])
        return found


def _chunk_id(row: _Row) -> bytes:
    return row[0]


def _entry_id(entry: PackEntry) -> bytes:
    return entry.id


def _rows(pack: int, entries: list[PackEntry]) -> Iterator[_Row]:
    for e in entries:
        yield e.id, pack, e.offset, e.length, e.size, e.at

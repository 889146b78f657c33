"""StatCache: remembers the chunks of local files, so an unchanged file is not read again.

A file is taken as unchanged when its size, mtime, ctime and inode all match what was
recorded; files modified within the last two seconds are never recorded, because a
further write in the same clock tick could leave those fields unchanged.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from datamon.core.model import ChunkRef

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER,
    chunks BLOB
) WITHOUT ROWID;
"""
RACY_NS = 2_000_000_000
_BATCH = 500
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[ChunkRef, ...])


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class StatCache:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            self._local.db = db
        return db

    def get_many(
        self, files: Sequence[tuple[str, os.stat_result]]
    ) -> dict[str, tuple[ChunkRef, ...]]:
        """The recorded chunks of those ``(path, stat)`` that are unchanged, in one query."""
        found: dict[str, tuple[ChunkRef, ...]] = {}
        wanted = {path: _key(st) for path, st in files}
        paths = list(wanted)
        db = self._db()
        for start in range(0, len(paths), _BATCH):
            batch = paths[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            rows = db.execute(
                "SELECT path, size, mtime_ns, ctime_ns, ino, chunks FROM files"
                f" WHERE path IN ({marks})",
                batch,
            )
            for path, *key, blob in rows:
                if tuple(key) != wanted[path]:
                    continue
                try:
                    found[path] = _decoder.decode(blob)
                except msgspec.DecodeError:
                    continue
        return found

    def put_many(self, files: Sequence[tuple[str, os.stat_result, tuple[ChunkRef, ...]]]) -> None:
        """Record files in one transaction, skipping those modified too recently to trust."""
        now = time.time_ns()
        rows = [
            (path, *_key(st), _encoder.encode(chunks))
            for path, st, chunks in files
            if now - max(st.st_mtime_ns, st.st_ctime_ns) >= RACY_NS
        ]
        if not rows:
            return
        db = self._db()
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

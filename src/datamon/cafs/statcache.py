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

    def get(self, path: str, st: os.stat_result) -> tuple[ChunkRef, ...] | None:
        row = (
            self._db()
            .execute(
                "SELECT size, mtime_ns, ctime_ns, ino, chunks FROM files WHERE path = ?", (path,)
            )
            .fetchone()
        )
        if row is None or tuple(row[:4]) != _key(st):
            return None
        try:
            return _decoder.decode(row[4])
        except msgspec.DecodeError:
            return None

    def put(self, path: str, st: os.stat_result, chunks: tuple[ChunkRef, ...]) -> None:
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
            return
        self._db().execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
            (path, *_key(st), _encoder.encode(chunks)),
        )

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

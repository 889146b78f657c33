"""LocalDB: one SQLite connection per thread to a file of local state (WAL, autocommit)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from datamon.errors import LocalStateError

# Seconds a connection waits for another one's lock, in the busy handler and in _use_wal.
TIMEOUT = 60.0
# Parameters in one statement of insert_rows, at most: fewer if the library allows fewer
# (32,766 by default since SQLite 3.32, 999 before; builds may set their own).
PARAMETERS = 32_000
# Rows in one statement of insert_rows, at most. A statement holds its rows' values until it
# runs, and the connection keeps the statement: W3's first upload peaked at 223-225 MiB with
# 6,400 rows a statement, 214-215 MiB with 256, 197-217 MiB one row at a time (3 or 6
# uploads each). 45,000 chunk-index rows beside two busy threads took 0.26-0.38 s at 6,400 rows a
# statement, 2.9 s at 256, 39-48 s one at a time.
ROWS = 256


def insert_rows(
    db: sqlite3.Connection,
    head: str,
    width: int,
    rows: Iterable[Sequence[object]],
    most: int = ROWS,
) -> None:
    """``head`` (``INSERT ... INTO table``) for each of ``rows`` (``width`` values each),
    up to ``most`` rows to a statement (``VALUES (...), (...)``), in order.

    ``executemany`` runs one step a row, and lets go of the interpreter lock for each: with
    other threads busy, taking it back can cost a switch interval (5 ms) a row (see
    :data:`ROWS`).
    """
    per = min(most, min(PARAMETERS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)) // width)
    one = "(" + ",".join("?" * width) + ")"
    full = f"{head} VALUES {','.join([one] * per)}"
    values: list[object] = []
    count = 0
    for row in rows:
        values.extend(row)
        count += 1
        if count == per:
            db.execute(full, values)
            values = []
            count = 0
    if count:
        db.execute(f"{head} VALUES {','.join([one] * count)}", values)


@contextmanager
def transaction(db: sqlite3.Connection, kind: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """One transaction on an autocommit connection: committed on exit, rolled back on error.

    ``IMMEDIATE`` takes the write lock at the start, so two writers never both read and
    then fail to upgrade; ``DEFERRED`` suits a writer that only inserts.
    """
    db.execute(f"BEGIN {kind}")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:  # (SQLite may have rolled back already, on a full disk)
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise LocalStateError(_file_of(db), str(exc)) from exc
        raise


def _file_of(db: sqlite3.Connection) -> str:
    """The file of ``db``'s main database."""
    for _seq, name, file in db.execute("PRAGMA database_list"):
        if name == "main":
            return str(file)
    return "(in memory)"


class _Held:
    """One thread's connection, closed when the thread ends (its thread-local storage is
    let go of, and this with it) or when the database is closed, whichever comes first.
    Threads of short-lived pools each opened a connection that stayed open for the life of
    the process: three file descriptors a thread, until a long session ran out of them."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __del__(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


class LocalDB:
    """The chunk-index and stat-cache copies share this: threads never share a connection."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every thread's connection while its thread lives (the thread-local holds it).
        self._all: weakref.WeakSet[_Held] = weakref.WeakSet()

    def get(self) -> sqlite3.Connection:
        held: _Held | None = getattr(self._local, "held", None)
        db = held.db if held is not None else None
        if db is None:
            db = sqlite3.connect(
                self.path, timeout=TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                _use_wal(db)
                db.execute(f"PRAGMA synchronous={self.synchronous}")
            except sqlite3.Error as exc:
                db.close()
                raise LocalStateError(str(self.path), str(exc)) from exc
            held = self._local.held = _Held(db)
            with self._lock:
                self._all.add(held)
        return db

    def ensure_schema(self, version: int, schema: str, tables: Sequence[str]) -> None:
        """Create the tables of ``schema`` (statements separated by ``;``) under ``PRAGMA
        user_version`` = ``version``; ``tables`` of another version are dropped, not migrated.

        A file already at ``version`` is left as it is without taking the write lock: the
        version is set in the transaction that makes the tables.
        """
        db = self.get()
        try:
            if _user_version(db) == version:
                return
            with transaction(db):
                if _user_version(db) != version:  # unless another process did it meanwhile
                    for table in tables:
                        db.execute(f"DROP TABLE IF EXISTS {table}")
                    db.execute(f"PRAGMA user_version = {version}")
                for statement in schema.split(";"):
                    if statement.strip():
                        db.execute(statement)
        except sqlite3.Error as exc:
            raise LocalStateError(str(self.path), str(exc)) from exc

    def release(self) -> None:
        """Close this thread's connection, if it has one: for a thread that ends while the
        object lives on (a connection holds three file descriptors)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is None:
            return
        del self._local.held
        with self._lock:
            self._all.discard(held)
        held.db.close()

    def close(self) -> None:
        """Close every thread's connection (none may be in use any more)."""
        with self._lock:
            connections, self._all = list(self._all), weakref.WeakSet()
        for held in connections:
            held.db.close()
        self._local = threading.local()


def _user_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch ``db`` to WAL, retrying while another connection holds the file.

    SQLite answers this pragma with SQLITE_BUSY at once, without its busy handler, while
    another connection is opening the same new file: two processes (or threads) starting on
    one cache folder failed at random with "database is locked" before this retry.
    """
    deadline = time.monotonic() + TIMEOUT
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.05)

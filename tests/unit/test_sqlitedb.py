"""LocalDB: the SQLite files of local state, opened by many connections at once."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from datamon.cafs import sqlitedb
from datamon.cafs.sqlitedb import LocalDB, insert_rows, transaction
from datamon.errors import LocalStateError

OPENERS = 8
ROUNDS = 150


def test_connections_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Without the retry of the WAL switch, about 2% of these rounds failed here with
    # "database is locked": the race of processes starting on one new cache folder.
    failures: list[BaseException] = []
    for round_ in range(ROUNDS):
        path = tmp_path / f"state-{round_}.db"
        barrier = threading.Barrier(OPENERS)

        def open_it(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            db = LocalDB(path, "NORMAL")
            barrier.wait()
            try:
                db.ensure_schema(1, "CREATE TABLE IF NOT EXISTS t (a INTEGER)", ["t"])
                db.get().execute("INSERT INTO t VALUES (1)")
            except BaseException as exc:
                failures.append(exc)
            finally:
                db.close()

        threads = [threading.Thread(target=open_it) for _ in range(OPENERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, f"round {round_}: {failures[0]!r}"
        check = LocalDB(path, "NORMAL")
        try:
            assert check.get().execute("SELECT count(*) FROM t").fetchone() == (OPENERS,)
        finally:
            check.close()


@pytest.mark.parametrize("conflict", ["IGNORE", "REPLACE"])
def test_rows_inserted_many_to_a_statement_are_those_of_one_statement_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conflict: str
) -> None:
    # 7 parameters a statement: 2 rows of 3, so the 9 rows take 5 statements, the last of 1.
    monkeypatch.setattr(sqlitedb, "PARAMETERS", 7)
    rows = [(b"k%d" % (i % 7), i, f"v{i}") for i in range(9)]  # k0 and k1 come twice
    results = []
    for name, insert in (
        ("many", lambda db: insert_rows(db, f"INSERT OR {conflict} INTO t", 3, iter(rows))),
        ("one", lambda db: db.executemany(f"INSERT OR {conflict} INTO t VALUES (?, ?, ?)", rows)),
    ):
        db = sqlite3.connect(tmp_path / f"{name}.db")
        db.execute("CREATE TABLE t (k BLOB PRIMARY KEY, n INTEGER, v TEXT)")
        insert(db)
        results.append(db.execute("SELECT * FROM t ORDER BY k").fetchall())
        db.close()
    assert results[0] == results[1]
    kept = dict(results[0][i][:2] for i in range(2))
    # IGNORE keeps the first row of a key, REPLACE the last.
    assert kept == ({b"k0": 0, b"k1": 1} if conflict == "IGNORE" else {b"k0": 7, b"k1": 8})
    assert len(results[0]) == 7


def test_rows_inserted_many_to_a_statement_keep_to_the_librarys_limit(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "limited.db")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)  # a build allowing few parameters
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    rows = [(i, f"v{i}") for i in range(10)]
    insert_rows(db, "INSERT INTO t", 2, rows)  # 3 rows a statement, not 16,000
    assert db.execute("SELECT * FROM t ORDER BY k").fetchall() == rows
    db.close()


def test_a_file_that_is_not_a_database_is_a_local_state_error(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"not a database, but sixteen bytes or more of something else" * 100)
    db = LocalDB(path, "NORMAL")
    with pytest.raises(LocalStateError, match=r"cannot use the local cache .*index\.sqlite"):
        db.get()


def test_a_failed_transaction_is_rolled_back_and_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    local = LocalDB(path, "NORMAL")
    local.ensure_schema(1, "CREATE TABLE t (k INTEGER PRIMARY KEY)", ["t"])
    db = local.get()
    with pytest.raises(LocalStateError, match=str(path)) as caught, transaction(db) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        tx.execute("INSERT INTO t VALUES (1)")  # the key again
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    local.close()


def _open_files(path: Path) -> int:
    """How many descriptors of this process name ``path`` or its WAL and index files."""
    import os

    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                count += 1
    return count


def test_a_thread_s_connection_is_closed_when_the_thread_ends(tmp_path: Path) -> None:
    """Connections of ended threads are closed: the descriptors stay few however many
    threads come and go. Left open, 25 threads a round took 50 more a round here; closed,
    the count moves by a few with SQLite's reuse of a closed connection's descriptors
    and with when the interpreter lets go of an ended thread's storage, so the bound is
    one round's worth of threads, not an exact count."""
    import gc

    path = tmp_path / "state.sqlite"
    local = LocalDB(path, "NORMAL")
    local.ensure_schema(1, "CREATE TABLE t (k INTEGER PRIMARY KEY)", ["t"])
    after: list[int] = []
    for _round in range(4):
        threads = [
            threading.Thread(
                target=lambda: local.get().execute("SELECT COUNT(*) FROM t").fetchone()
            )
            for _ in range(25)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.2)  # a thread's storage is let go of just after join() returns
        gc.collect()
        after.append(_open_files(path))
    assert max(after) < 25, after
    local.close()

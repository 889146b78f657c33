"""LocalDB: the SQLite files of local state, opened by many connections at once."""

from __future__ import annotations

import threading
from pathlib import Path

from datamon.cafs.sqlitedb import LocalDB

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

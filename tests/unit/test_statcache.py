"""When the stat cache may record a file: its times must have settled before reading began."""

from __future__ import annotations

import os
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from datamon.cafs import statcache
from datamon.cafs.statcache import RACY_FINE_NS, RACY_NS, Settled, StatCache
from datamon.core.model import ChunkRef

SECOND = 1_000_000_000
READ_AT = 1_800_000_000 * SECOND  # a whole second, as whole-second file systems store


def stat(mtime_ns: int, ctime_ns: int) -> os.stat_result:
    fields = (0o100644, 1, 1, 1, 0, 0, 10, 0, mtime_ns // SECOND, ctime_ns // SECOND)
    return os.stat_result(fields, {"st_mtime_ns": mtime_ns, "st_ctime_ns": ctime_ns})


@pytest.mark.parametrize(
    ("mtime_ns", "ctime_ns", "expected"),
    [
        # Sub-second times: the file system keeps them, so RACY_FINE_NS is enough.
        (READ_AT - RACY_FINE_NS - 1, READ_AT - SECOND + 7, True),
        (READ_AT - RACY_FINE_NS + 1, READ_AT - SECOND + 7, False),
        (READ_AT - SECOND + 7, READ_AT - RACY_FINE_NS + 1, False),
        # Whole seconds in both: perhaps a file system that keeps no more, so RACY_NS.
        (READ_AT - SECOND, READ_AT - SECOND, False),
        (READ_AT - RACY_NS, READ_AT - RACY_NS, True),
        (READ_AT - RACY_NS, READ_AT - SECOND, False),
        # Changed after reading began (clock skew, or a write during the read).
        (READ_AT + SECOND + 5, READ_AT + SECOND + 5, False),
    ],
)
def test_settled(mtime_ns: int, ctime_ns: int, expected: bool) -> None:
    assert Settled(READ_AT)(mtime_ns, ctime_ns) is expected


def test_rows_are_written_a_slice_at_a_time(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    old = stat(READ_AT - RACY_NS, READ_AT - RACY_NS)
    refs = (ChunkRef(b"\x02" * 32, 3),)
    n = 2 * statcache._ROWS + 5  # three slices
    rows = ((f"/t/{i:06d}", old, refs, ["p"]) for i in range(n))  # a generator, read once
    assert cache.put_many(rows, read_at=READ_AT) == n
    found = cache.get_many([("/t/000000", old), (f"/t/{n - 1:06d}", old)])
    assert found == {"/t/000000": refs, f"/t/{n - 1:06d}": refs}
    young = stat(READ_AT - 1, READ_AT - 1)
    assert cache.put_many([("/t/young", young, refs, ["p"])], read_at=READ_AT) == 0
    cache.close()


class _Gate(Future[None]):
    """A future that tells when someone waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def result(self, timeout: float | None = None) -> None:
        self.waited.set()
        return super().result(timeout)


def test_rows_are_committed_only_once_the_packs_are_durable(tmp_path: Path) -> None:
    cache, other = StatCache(tmp_path / "stat.sqlite"), StatCache(tmp_path / "stat.sqlite")
    old = stat(READ_AT - RACY_NS, READ_AT - RACY_NS)
    gate = _Gate()
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(
            cache.put_many,
            [(f"/g/{i}", old, (ChunkRef(b"\x03" * 32, 3),), ["p"]) for i in range(3)],
            READ_AT,
            gate,
        )
        try:
            assert gate.waited.wait(30)  # the rows are in, the packs not yet durable
            assert other.get_many([("/g/0", old)]) == {}
        finally:
            gate.set_result(None)
        assert done.result(30) == 3
    assert set(other.get_many([(f"/g/{i}", old) for i in range(3)])) == {"/g/0", "/g/1", "/g/2"}
    cache.close()
    other.close()


def test_no_row_is_kept_when_the_packs_do_not_become_durable(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    old = stat(READ_AT - RACY_NS, READ_AT - RACY_NS)
    gate = _Gate()
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(
            cache.put_many, [("/g/0", old, (ChunkRef(b"\x03" * 32, 3),), ["p"])], READ_AT, gate
        )
        assert gate.waited.wait(30)
        gate.set_exception(OSError("flush failed"))
        with pytest.raises(OSError, match="flush failed"):
            done.result(30)
    assert cache.get_many([("/g/0", old)]) == {}
    cache.close()


OLD = stat(READ_AT - RACY_NS, READ_AT - RACY_NS)
ONE = (ChunkRef(b"\x01" * 32, 5),)
TWO = (ChunkRef(b"\x02" * 32, 6),)


def test_rows_far_apart_are_merged_by_name(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    # Many folders between the two recorded again: their rows are read by name, not by range.
    cache.put_many([(f"/a/{i:05d}/x", OLD, ONE, ["p"]) for i in range(3000)], READ_AT)
    cache.put_many([("/a/00000/y", OLD, ONE, ["p"])], READ_AT)
    new = [("/a/00000/z", OLD, TWO, ["q"]), ("/a/02999/z", OLD, TWO, ["q"])]
    assert cache.put_many(new, READ_AT) == 2
    wanted = [(f"/a/{d}/{n}", OLD) for d in ("00000", "02999") for n in "xyz"]
    packs: dict[str, tuple[str, ...]] = {}
    found = cache.get_many(wanted, packs=packs)
    assert found == {
        "/a/00000/x": ONE,
        "/a/00000/y": ONE,
        "/a/00000/z": TWO,
        "/a/02999/x": ONE,
        "/a/02999/z": TWO,
    }
    assert packs["/a/00000/x"] == ("p",) and packs["/a/02999/z"] == ("q",)
    cache.close()


def test_a_folder_split_across_slices_keeps_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statcache, "_ROWS", 3)
    cache = StatCache(tmp_path / "stat.sqlite")
    big = [(f"/big/{i:02d}", OLD, ONE, [f"p{i % 2}"]) for i in range(10)]
    small = [(f"/s{i}/f", OLD, TWO, ["q"]) for i in range(4)]
    rows = big[:4] + small[:2] + big[4:] + small[2:] + [big[0]]  # and one file twice
    assert cache.put_many(rows, READ_AT) == 14
    found = cache.get_many([(path, OLD) for path, *_ in big + small])
    assert found == {path: refs for path, _st, refs, _packs in big + small}
    cache.close()


def test_a_failed_record_leaves_the_folder_row_as_it_was(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.put_many([("/g/a", OLD, ONE, ["p"])], READ_AT)
    failed: Future[None] = Future()
    failed.set_exception(OSError("flush failed"))
    with pytest.raises(OSError, match="flush failed"):
        cache.put_many([("/g/a", OLD, TWO, ["q"]), ("/g/b", OLD, TWO, ["q"])], READ_AT, failed)
    assert cache.get_many([("/g/a", OLD), ("/g/b", OLD)]) == {"/g/a": ONE}
    cache.close()


def test_a_file_naming_no_set_of_packs_is_not_reused(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.put_many([("/h/a", OLD, ONE, ["p"])], READ_AT)
    for position in (-1, 1):
        entries = [("a", 10, OLD.st_mtime_ns, OLD.st_ctime_ns, OLD.st_ino, ONE, position)]
        db = sqlite3.connect(cache.db_path)
        db.execute("UPDATE files SET entries = ?", (msgspec.msgpack.encode(entries),))
        db.commit()
        db.close()
        assert cache.get_many([("/h/a", OLD)]) == {}
    cache.close()


def test_files_no_longer_listed_in_their_folder_are_dropped(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    old = [(f"/d/{n}", OLD, ONE, ["p"]) for n in "abc"] + [("/e/a", OLD, ONE, ["p"])]
    cache.put_many(old, READ_AT)
    now = {"/d/": {"a", "c", "x"}}  # b was deleted; /e/ was not scanned
    cache.put_many([("/d/x", OLD, TWO, ["q"]), ("/e/x", OLD, TWO, ["q"])], READ_AT, None, now.get)
    wanted = [(f"/d/{n}", OLD) for n in "abcx"] + [("/e/a", OLD), ("/e/x", OLD)]
    assert set(cache.get_many(wanted)) == {"/d/a", "/d/c", "/d/x", "/e/a", "/e/x"}
    db = sqlite3.connect(cache.db_path)
    (entries,) = db.execute("SELECT entries FROM files WHERE folder = '/d/'").fetchone()
    db.close()
    assert sorted(f[0] for f in msgspec.msgpack.decode(entries)) == ["a", "c", "x"]
    cache.close()


def _folders(cache: StatCache) -> dict[str, list[str]]:
    db = sqlite3.connect(cache.db_path)
    rows = db.execute("SELECT folder, entries FROM files").fetchall()
    db.close()
    return {folder: sorted(f[0] for f in msgspec.msgpack.decode(e)) for folder, e in rows}


def test_forgotten_paths_leave_their_folders_row_and_take_the_rows_below(
    tmp_path: Path,
) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    names = ["/r/a", "/r/b", "/r/d/x", "/r/d/e/y", "/r/d0/z", "/r/dd/w", "/s/a"]
    cache.put_many([(name, OLD, ONE, ["p"]) for name in names], READ_AT)
    folder = statcache.Folder(b"t" * 32, 1, 1, 1)
    cache.put_folders((path, b"k", folder, ["p"]) for path in ("/r/d/", "/r/d/e/", "/r/dd/"))
    # A file, a folder with a subfolder, and a path the cache never saw.
    assert cache.forget(["/r/a", "/r/d", "/r/nothing"]) == 1 + 2 + 2
    assert _folders(cache) == {"/r/": ["b"], "/r/d0/": ["z"], "/r/dd/": ["w"], "/s/": ["a"]}
    assert cache.get_folders([("/r/dd/", b"k"), ("/r/d/", b"k")]) == {"/r/dd/": (folder, ("p",))}
    # The last file of a folder takes its row with it.
    assert cache.forget(["/s/a"]) == 1
    assert "/s/" not in _folders(cache)
    cache.close()


def test_rows_of_folders_gone_from_below_a_root_are_pruned(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    names = ["/r/a", "/r/d/x", "/r/d/e/y", "/r/k/z", "/r0/a", "/q/a"]
    cache.put_many([(name, OLD, ONE, ["p"]) for name in names], READ_AT)
    folder = statcache.Folder(b"t" * 32, 1, 1, 1)
    paths = ("/r/", "/r/d/", "/r/d/e/", "/r/k/", "/r0/")
    cache.put_folders((path, b"k", folder, ["p"]) for path in paths)
    # /r/d/ and /r/d/e/ are gone; /r0/ and /q/ are not below /r/.
    assert cache.prune("/r/", {"/r/", "/r/k/"}) == 2 + 2
    assert _folders(cache) == {"/r/": ["a"], "/r/k/": ["z"], "/r0/": ["a"], "/q/": ["a"]}
    kept = cache.get_folders([(path, b"k") for path in paths])
    assert sorted(kept) == ["/r/", "/r/k/", "/r0/"]
    cache.close()


def test_prepared_rows_replace_each_folder_row_whole(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.put_many([(name, OLD, ONE, ["p"]) for name in ("/r/a", "/r/gone", "/q/gone")], READ_AT)
    rows: statcache.PreparedRows[str] = statcache.PreparedRows(READ_AT)
    newer = stat(READ_AT - RACY_NS, READ_AT - RACY_NS + 1)
    racy = stat(READ_AT - 1, READ_AT - 1)
    rows.add_files("/r/", [("a", newer, TWO, "k1"), ("b", OLD, ONE, "k2"), ("c", racy, ONE, "k1")])
    rows.add_files("/q/", [("racy", racy, ONE, "k1")])  # nothing left to record
    packs = {"k1": ("p", "q"), "k2": ("p",)}
    asked: list[str] = []

    def resolve(key: str) -> tuple[str, ...] | None:
        asked.append(key)
        return packs[key]

    assert rows.write_files(cache, resolve) == 2
    assert sorted(asked) == ["k1", "k2"]  # once per key
    # The files of /r/ now, not the deleted one nor the racy one; /q/'s row is gone.
    assert _folders(cache) == {"/r/": ["a", "b"]}
    found: dict[str, tuple[str, ...]] = {}
    lookup = [("/r/a", newer), ("/r/b", OLD), ("/r/gone", OLD)]
    assert cache.get_many(lookup, packs=found) == {"/r/a": TWO, "/r/b": ONE}
    assert found == {"/r/a": ("p", "q"), "/r/b": ("p",)}
    cache.close()


def test_prepared_rows_leave_out_what_names_a_pack_not_written(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    rows: statcache.PreparedRows[str] = statcache.PreparedRows(READ_AT)
    rows.add_files("/r/", [("a", OLD, ONE, "ok"), ("b", OLD, TWO, "lost")])
    rows.add_files("/s/", [("c", OLD, ONE, "lost")])
    folder = statcache.Folder(b"t" * 32, 1, 1, 1)
    rows.add_folder("/r/", b"k", folder, ["ok", "lost"])
    rows.add_folder("/t/", b"k", folder, ["ok"])
    packs = {"ok": ("p",), "lost": None}
    assert rows.write_files(cache, packs.__getitem__) == 1
    assert _folders(cache) == {"/r/": ["a"]}
    assert rows.write_folders(cache, packs.__getitem__) == 1
    assert cache.get_folders([("/r/", b"k"), ("/t/", b"k")]) == {"/t/": (folder, ("p",))}
    cache.close()


def test_prepared_rows_are_committed_only_once_the_packs_are_durable(tmp_path: Path) -> None:
    cache, other = StatCache(tmp_path / "stat.sqlite"), StatCache(tmp_path / "stat.sqlite")
    rows: statcache.PreparedRows[str] = statcache.PreparedRows(READ_AT)
    rows.add_files("/g/", [(str(i), OLD, ONE, "k") for i in range(3)])
    gate = _Gate()
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(rows.write_files, cache, lambda _key: ("p",), gate)
        try:
            assert gate.waited.wait(30)
            assert other.get_many([("/g/0", OLD)]) == {}
        finally:
            gate.set_exception(OSError("flush failed"))
        with pytest.raises(OSError, match="flush failed"):
            done.result(30)
    assert other.get_many([("/g/0", OLD)]) == {}
    cache.close()
    other.close()


def test_files_recorded_below_a_folder(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.put_many([("/r/d/x", OLD, ONE, ["p"]), ("/r0/a", OLD, ONE, ["p"])], READ_AT)
    assert cache.has_files_below("/r/") and cache.has_files_below("/r/d/")
    assert cache.has_files_below("/") and cache.has_files_below("/r0/")
    assert not cache.has_files_below("/r/e/") and not cache.has_files_below("/q/")
    cache.close()


def test_no_prepared_rows_take_no_write_lock(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.put_many([("/r/x", OLD, ONE, ["p"])], READ_AT)  # the database exists
    holder = sqlite3.connect(tmp_path / "stat.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another upload writing its rows
    try:
        with ThreadPoolExecutor(1) as pool:
            # An unchanged tree taken whole has no rows to write: it does not wait.
            pool.submit(cache.put_rows, iter([])).result(5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    cache.close()

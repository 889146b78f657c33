"""Re-uploading through the stat cache: rows name durable packs and are trusted only then."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api import upload as upload_module
from datamon.api.folders import FolderRecords
from datamon.api.scan import LocalDir, LocalFile, scan
from datamon.cafs.ingest import Ingester
from datamon.cafs.layout import index_key, pack_key
from datamon.cafs.packer import PackWriter
from datamon.cafs.statcache import StatCache
from datamon.core.model import Bundle, ChunkRef, Entry, Kind
from datamon.metadata.trees import PendingTrees
from datamon.testing.workloads import describe_tree, random_bytes, write_tree

# Files written just now are "racy" and never cached; these tests take them as settled.
pytestmark = pytest.mark.usefixtures("settled", "scan_processes")


def _opts(author: Author) -> UploadOptions:
    return UploadOptions("msg", author)


def _tree(root: Path) -> Path:
    files = {f"d{i % 3}/f{i}.bin": random_bytes(i, 1000 + 37 * i) for i in range(20)}
    files["big.bin"] = random_bytes(99, 3_000_000)
    write_tree(root, files)
    return root


def test_reuse_takes_packs_from_the_row(
    local_store: Store, tmp_path: Path, author: Author, opened: list[str]
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    assert len(opened) == 21
    opened.clear()
    second = repo.upload(str(src), _opts(author))
    assert opened == []
    assert second.bundle.packs == first.bundle.packs
    assert second.bundle.tree == first.bundle.tree
    assert repo.verify(second.bundle_id).ok
    repo.download(second.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_interrupted_upload_records_nothing(
    local_store: Store,
    tmp_path: Path,
    author: Author,
    opened: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")

    def fail(*_args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(upload_module, "_build", fail)
        with pytest.raises(KeyboardInterrupt):
            repo.upload(str(src), _opts(author))
    rows = sqlite3.connect(local_store.stat_cache.db_path).execute("SELECT count(*) FROM files")
    assert rows.fetchone()[0] == 0
    opened.clear()
    result = repo.upload(str(src), _opts(author))
    assert len(opened) == 21
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


@pytest.mark.parametrize("drop_index_copy", [False, True])
def test_rows_naming_lost_packs_are_not_trusted(
    local_store: Store,
    tmp_path: Path,
    author: Author,
    opened: list[str],
    drop_index_copy: bool,
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    for pack in first.bundle.packs:  # as if a collector had removed them
        local_store.blob.delete(pack_key(pack))
        local_store.blob.delete(index_key(pack))
    if drop_index_copy:  # the chunk index copy is only a cache: deleting it is safe
        local_store.index.close()
        os.remove(local_store.index.db_path)
        local_store.index.__init__(local_store.blob, local_store.index.db_path)  # type: ignore[misc]
    opened.clear()
    second = repo.upload(str(src), _opts(author))
    assert len(opened) == 21
    assert second.new_chunks == first.new_chunks
    assert repo.verify(second.bundle_id).ok
    repo.download(second.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_a_second_store_does_not_trust_the_first_ones_rows(
    tmp_path: Path, author: Author, opened: list[str]
) -> None:
    src = _tree(tmp_path / "src")
    one = Store.open(str(tmp_path / "one"))
    two = Store.open(str(tmp_path / "two"))
    try:
        Repository.create(one, "r", "", author).upload(str(src), _opts(author))
        opened.clear()
        repo = Repository.create(two, "r", "", author)
        result = repo.upload(str(src), _opts(author))
        assert len(opened) == 21
        assert repo.verify(result.bundle_id).ok
    finally:
        one.close()
        two.close()


def test_stat_cache_range_lookup(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    st = os.stat(tmp_path)
    refs = (ChunkRef(b"\x01" * 32, 5),)
    # A row per folder: many unrelated folders between the wanted ones force the by-name
    # fallback.
    rows = [(f"/a/{i:05d}/f", st, refs, ["p"]) for i in range(3000)]
    cache.put_many(rows)
    wanted = [("/a/00000/f", st), ("/a/02999/f", st), ("/a/missing/f", st), ("/a/00001/g", st)]
    found = cache.get_many(wanted)
    assert found == {"/a/00000/f": refs, "/a/02999/f": refs}
    assert len(cache.get_many([(p, st) for p, *_ in rows[100:400]])) == 300
    cache.close()


def test_a_folder_row_keeps_the_files_not_recorded_again(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    st = os.stat(tmp_path)
    one, two = (ChunkRef(b"\x01" * 32, 5),), (ChunkRef(b"\x02" * 32, 6),)
    assert cache.put_many([("/d/a", st, one, ["p"]), ("/d/b", st, one, ["p"])]) == 2
    assert cache.put_many([("/d/b", st, two, ["q"]), ("/d/c", st, two, ["q", "p"])]) == 2
    packs: dict[str, tuple[str, ...]] = {}
    found = cache.get_many([("/d/a", st), ("/d/b", st), ("/d/c", st)], packs=packs)
    assert found == {"/d/a": one, "/d/b": two, "/d/c": two}
    assert packs == {"/d/a": ("p",), "/d/b": ("q",), "/d/c": ("p", "q")}
    # A row that does not decode is replaced by the files recorded next.
    db = sqlite3.connect(cache.db_path)
    db.execute("UPDATE files SET entries = x'c1' WHERE folder = '/d/'")
    db.commit()
    db.close()
    assert cache.get_many([("/d/a", st)]) == {}
    cache.put_many([("/d/c", st, one, ["p"])])
    assert cache.get_many([("/d/a", st), ("/d/c", st)]) == {"/d/c": one}
    cache.close()


def test_old_stat_cache_tables_are_dropped(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "stat.sqlite")
    db.execute(
        "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
        " ctime_ns INTEGER, ino INTEGER, chunks BLOB) WITHOUT ROWID"
    )
    db.execute("INSERT INTO files VALUES ('/x', 1, 2, 3, 4, x'90')")
    db.commit()
    db.close()
    cache = StatCache(tmp_path / "stat.sqlite")
    assert cache.get_many([("/x", os.stat(tmp_path))]) == {}
    cache.close()


def test_files_are_ordered_by_path_components(tmp_path: Path) -> None:
    names = ["a-b/x", "a/b", "a/c/d", "a/c-e", "a.b", "a/z", "b/a/a", "A", "a b/c"]
    write_tree(tmp_path / "t", {n: b"." for n in names})
    root = str(tmp_path / "t")
    got = [f.path for f in upload_module._ordered(scan(root))]
    want = sorted(
        (os.path.abspath(os.path.join(root, n)) for n in names),
        key=lambda p: os.path.relpath(p, root).split(os.sep),
    )
    assert got == want


def test_each_set_of_packs_is_judged_once(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    st = os.stat(tmp_path)
    refs = (ChunkRef(b"\x01" * 32, 5),)
    cache.put_many([(f"/a/{i}", st, refs, ["q", "p"]) for i in range(5)])
    cache.put_many([("/a/x", st, refs, ["r"]), ("/b/y", st, refs, ["s"])])
    cache.put_many([("/c/z", st, refs, ["t"]), ("/e/w", st, refs, ["u"])])
    db = sqlite3.connect(cache.db_path)
    db.execute("UPDATE files SET packs = x'c1' WHERE folder = '/c/'")  # not MessagePack
    db.execute("UPDATE files SET entries = x'c1' WHERE folder = '/e/'")
    db.commit()
    db.close()
    asked: list[tuple[str, ...]] = []

    def trusted(packs: tuple[str, ...]) -> bool:
        asked.append(packs)
        return packs != ("r",)

    wanted = [(f"/a/{i}", st) for i in range(5)]
    wanted += [("/a/x", st), ("/b/y", st), ("/c/z", st), ("/e/w", st)]
    found = cache.get_many(wanted, trusted)
    assert found == {
        "/a/0": refs,
        "/a/1": refs,
        "/a/2": refs,
        "/a/3": refs,
        "/a/4": refs,
        "/b/y": refs,
    }
    # Not for the packs of rows that do not decode.
    assert sorted(asked) == [("p", "q"), ("r",), ("s",)]
    assert len(cache.get_many(wanted)) == 7
    cache.close()


def test_reuse_trusts_rows_by_their_packs(local_store: Store, tmp_path: Path) -> None:
    cache = local_store.stat_cache
    st = os.stat(tmp_path)
    one = (ChunkRef(b"\x01" * 32, 5),)
    two = (ChunkRef(b"\x02" * 32, 7), ChunkRef(b"\x03" * 32, 11))
    cache.put_many([("/a/1", st, one, ["known"]), ("/a/2", st, two, ["known"])])
    cache.put_many([("/a/3", st, one, ["known", "lost"]), ("/a/4", st, (), ["known"])])
    packer = PackWriter(local_store.index, 1 << 20)
    ingester = Ingester(local_store.chunker, local_store.index, packer, 1, stat_cache=cache)
    ingester._known = {"known"}
    try:
        kept = ingester.reuse([(f"/a/{i}", st) for i in range(1, 5)])
    finally:
        ingester.close()
        packer.abort()
    assert kept == {"/a/1": one, "/a/2": two, "/a/4": ()}
    assert ingester.stats.packs_used == {"known"}
    assert (ingester.stats.chunks, ingester.stats.bytes_read) == (3, 23)


def test_relative_path_with_trailing_slash(
    local_store: Store,
    tmp_path: Path,
    author: Author,
    opened: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    _tree(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    first = repo.upload("src/", _opts(author))
    opened.clear()
    second = repo.upload("./src", _opts(author))
    assert opened == []
    assert second.bundle.tree == first.bundle.tree
    assert (second.bundle.files, second.bundle.size) == (21, first.bundle.size)


def test_unchanged_folder_stores_and_checks_no_tree(
    local_store: Store, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    tree_puts: list[str] = []
    real = local_store.meta.put_if_absent

    def put_if_absent(key: str, data: bytes) -> bool:
        if key.startswith("trees/"):
            tree_puts.append(key)
        return real(key, data)

    monkeypatch.setattr(local_store.meta, "put_if_absent", put_if_absent)
    second = repo.upload(str(src), _opts(author))
    assert second.bundle.tree == first.bundle.tree
    assert (tree_puts, second.trees_written) == ([], 0)
    (src / "d1" / "f1.bin").write_bytes(b"changed")
    third = repo.upload(str(src), _opts(author))
    assert third.bundle.tree != first.bundle.tree
    # d0 and d2 are unchanged folders, taken whole from the stat cache: only the root and d1
    # are built, and both are new.
    assert len(tree_puts) == 2
    assert third.trees_written == 2
    assert repo.verify(third.bundle_id).ok


def test_trees_are_stored_on_a_retry_onto_another_head(mem_store: Store) -> None:
    trees = PendingTrees(mem_store.trees)
    leaf = trees.add([])
    top = Entry("", Kind.DIR, 0o755, 0, tree=trees.add([Entry("d", Kind.DIR, 0o755, 0, tree=leaf)]))
    build = upload_module._unless_head(trees, top, ("p",))

    def head(tree: bytes) -> Bundle:
        return Bundle(
            format=1,
            repo="r",
            parents=(),
            message="",
            author=Author("a", "a@b"),
            timestamp=datetime.now(UTC),
            tree=tree.hex(),
            packs=(),
            files=0,
            size=0,
            branch="b",
        )

    assert build(head(top.tree)) == (top, ("p",))
    assert (len(trees), mem_store.trees.written) == (2, 0)
    assert build(head(leaf)) == (top, ("p",))
    assert (len(trees), mem_store.trees.written) == (0, 2)
    assert build(None) == (top, ("p",))
    assert mem_store.trees.written == 2
    assert [e.name for e in mem_store.trees.entries(top.tree)] == ["d"]


def test_a_full_upload_prunes_the_rows_of_deleted_folders(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    (src / "d1" / "deep").mkdir()
    (src / "d1" / "deep" / "x.bin").write_bytes(b"x" * 100)
    repo.upload(str(src), _opts(author))

    def folders(table: str, column: str) -> set[str]:
        db = sqlite3.connect(local_store.stat_cache.db_path)
        rows = db.execute(f"SELECT {column} FROM {table}").fetchall()
        db.close()
        return {row[0][len(str(src)) :] for row in rows}

    assert {"/d1/", "/d1/deep/"} <= folders("files", "folder")
    assert {"/d1/", "/d1/deep/"} <= folders("folders", "path")
    for f in (src / "d1" / "deep").iterdir():
        f.unlink()
    (src / "d1" / "deep").rmdir()
    (src / "d1" / "f1.bin").unlink()
    repo.upload(str(src), _opts(author))
    assert folders("files", "folder") == {"/", "/d0/", "/d1/", "/d2/"}
    assert folders("folders", "path") == {"/", "/d0/", "/d1/", "/d2/"}
    # The other files of d1 were unchanged (taken from the cache, not read): its row still
    # drops the deleted one.
    db = sqlite3.connect(local_store.stat_cache.db_path)
    (entries,) = db.execute(
        "SELECT entries FROM files WHERE folder = ?", (f"{src}/d1/",)
    ).fetchone()
    db.close()
    names = sorted(f[0] for f in msgspec.msgpack.decode(entries))
    assert names == sorted(p.name for p in (src / "d1").iterdir() if p.is_file())
    assert "f1.bin" not in names


def test_an_upload_lets_go_of_each_folders_files_once_it_is_named(
    local_store: Store, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, tuple[int, int, int]] = {}
    real = FolderRecords.folder

    def spy(
        self: FolderRecords,
        node: LocalDir,
        entry: Entry,
        files: Sequence[tuple[LocalFile, tuple[ChunkRef, ...]]],
        paths: Sequence[str],
    ) -> None:
        real(self, node, entry, files, paths)
        assert paths == [f.path for f, _chunks in files]
        held = sum(path in self._arrivals for path in paths)
        taken = sum(key is not None for key in self._ingester.take(paths))
        seen[node.rel] = (len(node.files), held, taken)

    monkeypatch.setattr(FolderRecords, "folder", spy)
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    # Every folder was named, and its scanned files, chunk lists and packs let go of.
    assert seen == {rel: (0, 0, 0) for rel in ("", "d0/", "d1/", "d2/")}
    # What the rows recorded is what a second upload reuses without reading a file.
    (src / "d1" / "new.bin").write_bytes(b"new")
    second = repo.upload(str(src), _opts(author))
    assert second.bytes_stored < 100 and first.bundle.packs[0] in second.bundle.packs
    assert repo.verify(second.bundle_id).ok


def test_an_upload_whose_chunk_index_copy_fails_commits_and_the_next_one_dedupes(
    local_store: Store,
    tmp_path: Path,
    author: Author,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The local index is recorded while the upload commits; it only spares later uploads
    # reading pack indexes from the store, so failing to write it fails nothing.
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    real = type(local_store.index).record_many
    failing = [True]

    def record_many(self: object, indexes: Sequence[object]) -> None:
        if failing[0] and list(indexes):
            raise sqlite3.OperationalError("disk I/O error")
        real(self, indexes)  # type: ignore[arg-type]

    monkeypatch.setattr(type(local_store.index), "record_many", record_many)
    with caplog.at_level(logging.WARNING):
        first = repo.upload(str(src), _opts(author))
    assert any("chunk index was not updated" in r.message for r in caplog.records)
    assert local_store.index.known_packs() == set()
    failing[0] = False
    (src / "d0" / "f0.bin").write_bytes(b"changed")
    second = repo.upload(str(src), _opts(author))
    # The rest is found through the pack indexes, which its sync read from the store.
    assert second.new_chunks == 1
    assert local_store.index.known_packs() >= set(first.bundle.packs)
    assert repo.verify(first.bundle_id).ok and repo.verify(second.bundle_id).ok


def test_reread_reads_every_file_and_records_it_again(
    local_store: Store, tmp_path: Path, author: Author, opened: list[str]
) -> None:
    """A file whose content changed while its stat did not (another file system mounted in
    the folder's place can do that) is taken from the stat cache; ``reread`` reads it."""
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    write_tree(src, {"d/x.bin": random_bytes(1, 5000), "d/y.bin": random_bytes(2, 5000)})
    repo.upload(str(src), _opts(author))
    # The cache says x holds y's chunks, as it would after such a change; its folder rows
    # go, so that x is looked up file by file.
    cache = local_store.stat_cache
    x, y = str(src / "d" / "x.bin"), str(src / "d" / "y.bin")
    packs: dict[str, tuple[str, ...]] = {}
    recorded = cache.get_many([(x, os.stat(x)), (y, os.stat(y))], packs=packs)
    cache.put_many([(x, os.stat(x), recorded[y], packs[y])])
    with sqlite3.connect(cache.db_path) as db:
        db.execute("DELETE FROM folders")

    trusted = repo.upload(str(src), _opts(author))
    repo.download(trusted.bundle_id, str(tmp_path / "trusted"))
    assert (tmp_path / "trusted" / "d" / "x.bin").read_bytes() == random_bytes(2, 5000)

    opened.clear()
    reread = repo.upload(str(src), UploadOptions("msg", author, reread=True))
    assert sorted(opened) == [x, y]
    repo.download(reread.bundle_id, str(tmp_path / "reread"))
    assert describe_tree(tmp_path / "reread") == describe_tree(src)

    opened.clear()  # recorded again: the next upload reads nothing and gives the same tree
    again = repo.upload(str(src), _opts(author))
    assert opened == []
    assert again.bundle.tree == reread.bundle.tree


@pytest.mark.parametrize("how", ["listed path", "subfolder"])
def test_a_reread_leaves_no_folder_row_that_gives_the_old_tree(
    local_store: Store, tmp_path: Path, author: Author, how: str
) -> None:
    """After a reread of part of a tree, the rows of the folders above it (and, for listed
    paths, of those read) no longer hand a later full upload the tree they recorded."""
    repo = Repository.create(local_store, "r", "", author)
    a, b = random_bytes(1, 5000), random_bytes(2, 5000)
    src, other = tmp_path / "src", tmp_path / "other"
    write_tree(src, {"d/x.bin": a, "d/y.bin": b})
    write_tree(other, {"d/x.bin": b, "d/y.bin": b})
    repo.upload(str(src), _opts(author))
    repo.upload(str(other), _opts(author))
    # src's rows say what other's say, files and folders, under src's unchanged keys.
    cache = local_store.stat_cache
    x, ox = str(src / "d" / "x.bin"), str(other / "d" / "x.bin")
    packs: dict[str, tuple[str, ...]] = {}
    recorded = cache.get_many([(ox, os.stat(ox))], packs=packs)
    cache.put_many([(x, os.stat(x), recorded[ox], packs[ox])])
    with sqlite3.connect(cache.db_path) as db:
        for sub in ("d/", ""):
            row = db.execute(
                "SELECT folder, packs FROM folders WHERE path = ?", (f"{other}/{sub}",)
            ).fetchone()
            db.execute(
                "UPDATE folders SET folder = ?, packs = ? WHERE path = ?", (*row, f"{src}/{sub}")
            )

    def x_of(bid: str, name: str) -> bytes:
        repo.download(bid, str(tmp_path / name))
        return (tmp_path / name / "d" / "x.bin").read_bytes()

    assert x_of(repo.upload(str(src), _opts(author)).bundle_id, "trusted") == b
    reread = UploadOptions("msg", author, reread=True)
    if how == "listed path":
        repo.upload_paths(str(src), ["d/x.bin"], reread)
    else:
        Repository.create(local_store, "sub", "", author).upload(str(src / "d"), reread)
    assert x_of(repo.upload(str(src), _opts(author)).bundle_id, "after") == a

"""Unchanged folders taken whole from the stat cache: their keys, and when they are trusted."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import msgspec
import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api.folders import FolderKeys
from datamon.api.scan import scan
from datamon.api.upload import UploadResult
from datamon.cafs import statcache
from datamon.cafs.statcache import Folder, StatCache
from datamon.metadata.layout import tree_key
from datamon.testing.workloads import describe_tree, random_bytes, write_tree

OLD = -(10**18)
pytestmark = pytest.mark.usefixtures("scan_processes")


@pytest.fixture
def old_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statcache, "RACY_NS", OLD)
    monkeypatch.setattr(statcache, "RACY_FINE_NS", OLD)


def _src(root: Path) -> Path:
    files = {f"a/b/f{i}": random_bytes(i, 500 + i) for i in range(4)}
    files.update({f"c/g{i}": random_bytes(10 + i, 700) for i in range(3)})
    files["top"] = b"top"
    write_tree(root, files)
    return root


def _uploaded(
    store: Store, tmp_path: Path, author: Author
) -> tuple[Repository, Path, UploadOptions, UploadResult]:
    """A repo with the tree of :func:`_src` uploaded once."""
    repo = Repository.create(store, "r", "", author)
    src = _src(tmp_path / "src")
    opts = UploadOptions("m", author)
    return repo, src, opts, repo.upload(str(src), opts)


def _keys(root: Path) -> dict[str, bytes | None]:
    """Each folder's key by its path relative to ``root`` ("" for the root)."""
    keys = FolderKeys(scan(str(root)), time.time_ns())
    base = os.path.join(os.path.abspath(root), "")
    return {keys.paths[node][len(base) :]: key for node, key in keys.keys.items()}


@pytest.mark.usefixtures("old_enough")
def test_a_change_changes_the_keys_of_its_folder_and_those_above(tmp_path: Path) -> None:
    src = _src(tmp_path / "src")
    before = _keys(src)
    assert set(before) == {"", "a/", "a/b/", "c/"} and None not in before.values()
    assert _keys(src) == before

    def changed() -> set[str]:
        now = _keys(src)
        return {rel for rel in before if now.get(rel) != before[rel]}

    (src / "a" / "b" / "f1").write_bytes(b"new content")
    assert changed() == {"", "a/", "a/b/"}
    before = _keys(src)
    (src / "c" / "g0").rename(src / "c" / "renamed")
    assert changed() == {"", "c/"}
    before = _keys(src)
    os.chmod(src / "a" / "b", 0o700)  # a folder's mode is in its parent's listing
    assert changed() == {"", "a/"}
    before = _keys(src)
    os.symlink("top", src / "c" / "link")
    assert changed() == {"", "c/"}
    before = _keys(src)
    os.remove(src / "c" / "link")
    os.symlink("c", src / "c" / "link")
    assert changed() == {"", "c/"}


def test_a_folder_with_a_file_changed_just_now_has_no_key(tmp_path: Path) -> None:
    src = _src(tmp_path / "src")
    keys = _keys(src)  # files written just now: not settled
    assert keys["a/b/"] is None and keys["a/"] is None and keys[""] is None


def test_folder_rows_need_their_key_and_trusted_packs(tmp_path: Path) -> None:
    cache = StatCache(tmp_path / "stat.sqlite")
    folder = Folder(b"\x01" * 32, 10, 2, 3)
    cache.put_folders([("/x/a/", b"k1", folder, ["p", "q"]), ("/x/b/", b"k2", folder, ["r"])])
    found = cache.get_folders([("/x/a/", b"k1"), ("/x/b/", b"k2")])
    assert found == {"/x/a/": (folder, ("p", "q")), "/x/b/": (folder, ("r",))}
    assert cache.get_folders([("/x/a/", b"other")]) == {}
    trusted = cache.get_folders([("/x/a/", b"k1"), ("/x/b/", b"k2")], lambda p: p != ("r",))
    assert set(trusted) == {"/x/a/"}
    cache.close()


def test_an_older_stat_cache_is_dropped(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "stat.sqlite")
    db.execute("CREATE TABLE files (path TEXT PRIMARY KEY, junk)")
    db.execute("INSERT INTO files VALUES ('/a', 1)")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    cache = StatCache(tmp_path / "stat.sqlite")
    assert cache.get_many([("/a", os.stat(tmp_path))]) == {}
    cache.put_folders([("/x/", b"k", Folder(b"\x02" * 32, 0, 0, 0), [])])
    assert set(cache.get_folders([("/x/", b"k")])) == {"/x/"}
    cache.close()


@pytest.mark.usefixtures("old_enough")
def test_unchanged_folders_are_taken_whole(
    local_store: Store, tmp_path: Path, author: Author, opened: list[str]
) -> None:
    repo, src, opts, first = _uploaded(local_store, tmp_path, author)
    opened.clear()
    looked_up: list[str] = []
    real = local_store.stat_cache.get_many

    def get_many(files, *args, **kwargs):  # type: ignore[no-untyped-def]
        looked_up.extend(path for path, _st in files)
        return real(files, *args, **kwargs)

    local_store.stat_cache.get_many = get_many  # type: ignore[method-assign]
    second = repo.upload(str(src), opts)
    # The root is unchanged: no file is looked up one by one, let alone read.
    assert (looked_up, opened) == ([], [])
    assert second.bundle.tree == first.bundle.tree
    assert second.bundle.packs == first.bundle.packs
    assert (second.chunks, second.bytes_read) == (first.chunks, first.bytes_read)
    (src / "c" / "g1").write_bytes(b"changed")
    third = repo.upload(str(src), opts)
    # Only the changed folder's files are looked up; the one changed is read.
    assert sorted(os.path.basename(p) for p in looked_up) == ["g0", "g1", "g2", "top"]
    assert [os.path.basename(p) for p in opened] == ["g1"]
    assert third.bytes_read == first.bytes_read - 700 + 7
    assert repo.verify(third.bundle_id).ok
    repo.download(third.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


@pytest.mark.usefixtures("old_enough")
def test_a_folder_whose_packs_are_gone_is_rebuilt(
    local_store: Store, tmp_path: Path, author: Author, opened: list[str]
) -> None:
    repo, src, opts, first = _uploaded(local_store, tmp_path, author)
    # The chunk index copy no longer lists the packs: neither folder nor file rows are
    # trusted, so every file is read again (its chunks are still found in the index).
    opened.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(local_store.index), "known_packs", lambda _self: set())
        second = repo.upload(str(src), opts)
    assert len(opened) == 8
    assert second.bundle.tree == first.bundle.tree
    assert repo.verify(second.bundle_id).ok


@pytest.mark.usefixtures("old_enough")
def test_a_folder_whose_tree_is_gone_is_built_again(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo, src, opts, first = _uploaded(local_store, tmp_path, author)
    (src / "top").write_bytes(b"changed")  # the root changes; a/ and c/ do not
    root_tree = bytes.fromhex(first.bundle.tree)
    a_tree = next(e.tree for e in local_store.trees.entries(root_tree) if e.name == "a")
    os.remove(local_store.meta.root / tree_key(a_tree.hex()))  # as if restored from a backup
    second = repo.upload(str(src), opts)
    assert local_store.trees.exists(a_tree)  # written again
    assert second.trees_written == 2  # the root and a/; a/b/ is still stored
    assert repo.verify(second.bundle_id).ok


@pytest.mark.usefixtures("old_enough")
def test_an_upload_drops_deleted_files_from_their_folder_row(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo, src, opts, _first = _uploaded(local_store, tmp_path, author)
    (src / "c" / "g0").unlink()
    (src / "c" / "new").write_bytes(b"new")
    repo.upload(str(src), opts)
    folder = os.path.join(os.path.abspath(src / "c"), "")
    db = sqlite3.connect(local_store.stat_cache.db_path)
    (entries,) = db.execute("SELECT entries FROM files WHERE folder = ?", (folder,)).fetchone()
    db.close()
    assert sorted(f[0] for f in msgspec.msgpack.decode(entries)) == ["g1", "g2", "new"]

"""Uploading only some paths onto the branch head (``bundle upload --only``)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from datamon import Author, Repository, Store, UploadOptions
from datamon.api import upload as upload_module
from datamon.errors import InvalidArgument, UnsafePath
from datamon.testing.workloads import describe_tree, random_bytes, write_tree


def _opts(author: Author, message: str = "msg") -> UploadOptions:
    return UploadOptions(message, author)


def _tree(root: Path) -> Path:
    files = {f"d{i % 4}/sub/f{i}.bin": random_bytes(i, 500 + 13 * i) for i in range(40)}
    files["top.csv"] = b"a,b\n1,2\n"
    write_tree(root, files)
    (root / "empty").mkdir()
    (root / "d0" / "link").symlink_to("sub/f0.bin")
    return root


def _change(src: Path) -> list[str]:
    """Edit the tree on disk; the paths a user would list."""
    (src / "top.csv").write_bytes(b"a,b\n1,2\n3,4\n")
    (src / "d1" / "sub" / "f1.bin").unlink()
    (src / "d2" / "sub" / "f2.bin").write_bytes(b"changed")
    os.chmod(src / "d2" / "sub" / "f2.bin", 0o600)
    (src / "new" / "deep").mkdir(parents=True)
    (src / "new" / "deep" / "n.txt").write_text("new\n")
    (src / "new" / "up").symlink_to("../top.csv")
    (src / "d3" / "ln").symlink_to("../d0/sub")
    return ["top.csv", "d1/sub/f1.bin", "./d2/sub/f2.bin", "new", "d3/ln", "new/deep/n.txt"]


def test_only_paths_give_the_tree_a_full_upload_gives(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    paths = _change(src)
    partial = repo.upload_paths(str(src), paths, _opts(author, "partial"))
    assert partial.bundle.parents == (first.bundle_id,)
    assert partial.bytes_read == len(b"a,b\n1,2\n3,4\n") + len(b"changed") + len(b"new\n")

    other = Repository.create(local_store, "full", "", author)
    full = other.upload(str(src), _opts(author))
    assert partial.bundle.tree == full.bundle.tree
    assert (partial.bundle.files, partial.bundle.size) == (full.bundle.files, full.bundle.size)
    assert repo.verify(partial.bundle_id).ok
    repo.download(partial.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_unlisted_changes_are_not_read(local_store: Store, tmp_path: Path, author: Author) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    repo.upload(str(src), _opts(author))
    (src / "top.csv").write_text("listed\n")
    (src / "d0" / "sub" / "f0.bin").write_text("not listed\n")
    result = repo.upload_paths(str(src), ["top.csv"], _opts(author))
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert (tmp_path / "dest" / "top.csv").read_text() == "listed\n"
    assert (tmp_path / "dest" / "d0" / "sub" / "f0.bin").read_bytes() == random_bytes(0, 500)


def test_a_listed_folder_is_uploaded_whole_and_a_gone_one_removed(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    repo.upload(str(src), _opts(author))
    (src / "d1" / "sub" / "extra.bin").write_bytes(b"x" * 100)
    for f in (src / "d3" / "sub").iterdir():
        f.unlink()
    (src / "d3" / "sub").rmdir()
    result = repo.upload_paths(str(src), ["d1", "d3/sub", "d1/sub/extra.bin"], _opts(author))
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_partial_upload_on_an_empty_branch_holds_only_the_paths(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    result = repo.upload_paths(str(src), ["top.csv", "d0/sub/f0.bin"], _opts(author))
    assert result.bundle.parents == ()
    assert result.bundle.files == 2
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert sorted(
        p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*")
    ) == [
        "d0",
        "d0/sub",
        "d0/sub/f0.bin",
        "top.csv",
    ]


@pytest.mark.parametrize("bad", ["..", "../x", "/etc/passwd", ".", ""])
def test_paths_outside_the_folder_are_refused(
    local_store: Store, tmp_path: Path, author: Author, bad: str
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    with pytest.raises(InvalidArgument):
        repo.upload_paths(str(src), [bad], _opts(author))
    assert repo.bundles() == []


def test_unsafe_symlinks_and_symlinked_folders_are_refused(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("no")
    (src / "escape").symlink_to("../outside/secret")
    (src / "d0" / "up").symlink_to("../..")
    (src / "via").symlink_to("d0")
    (src / "chain").symlink_to("d0/up/outside")
    for path in ("escape", "d0", "via/sub/f0.bin", "chain"):
        with pytest.raises(UnsafePath):
            repo.upload_paths(str(src), [path], _opts(author))
    assert repo.bundles() == []


def test_interrupted_partial_upload_leaves_the_branch(
    local_store: Store, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    paths = _change(src)

    def fail(*_args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(upload_module.TreeEdit, "write", fail)
        with pytest.raises(KeyboardInterrupt):
            repo.upload_paths(str(src), paths, _opts(author))
    assert [bid for bid, _b in repo.bundles()] == [first.bundle_id]
    again = repo.upload_paths(str(src), paths, _opts(author))
    repo.download(again.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_a_file_that_became_a_folder_must_be_listed_as_the_folder(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    repo.upload(str(src), _opts(author))
    (src / "top.csv").unlink()
    (src / "top.csv").mkdir()
    (src / "top.csv" / "inner.txt").write_text("now a folder\n")
    (src / "top.csv-x").write_text("sorts between top.csv and top.csv/inner.txt\n")
    with pytest.raises(InvalidArgument, match="list the folder"):
        repo.upload_paths(str(src), ["top.csv/inner.txt"], _opts(author))
    result = repo.upload_paths(
        str(src), ["top.csv", "top.csv/inner.txt", "top.csv-x"], _opts(author)
    )
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_a_new_symlink_is_checked_with_the_heads_others(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    (src / "a" / "e").mkdir(parents=True)
    (src / "a" / "e" / "f.txt").write_text("f\n")
    (src / "l").symlink_to("a/e/..")
    first = repo.upload(str(src), _opts(author))
    (src / "a" / "e" / "f.txt").unlink()
    (src / "a" / "e").rmdir()
    (src / "a" / "e").symlink_to("..")  # harmless alone; with l -> a/e/.. it leaves the tree
    with pytest.raises(UnsafePath):
        repo.upload_paths(str(src), ["a/e"], _opts(author))
    assert [bid for bid, _b in repo.bundles()] == [first.bundle_id]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("d0/nul\x00x", InvalidArgument),
        ("bad\udcff/x", UnsafePath),
        ("no/such/file", InvalidArgument),
        ("top.csv/x", InvalidArgument),
    ],
)
def test_bad_paths_are_refused_before_anything_is_committed(
    local_store: Store, tmp_path: Path, author: Author, bad: str, error: type[Exception]
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    first = repo.upload(str(src), _opts(author))
    with pytest.raises(error):
        repo.upload_paths(str(src), [bad], _opts(author))
    assert [bid for bid, _b in repo.bundles()] == [first.bundle_id]


def _cached_files(store: Store, root: Path) -> set[str]:
    """The paths, relative to ``root``, of the files the stat cache holds a row entry for."""
    db = sqlite3.connect(store.stat_cache.db_path)
    rows = db.execute("SELECT folder, entries FROM files").fetchall()
    db.close()
    prefix = len(str(root)) + 1
    return {folder[prefix:] + f[0] for folder, blob in rows for f in msgspec.msgpack.decode(blob)}


def test_the_stat_cache_forgets_what_a_partial_upload_removed(
    local_store: Store, tmp_path: Path, author: Author, settled: None
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    repo.upload(str(src), _opts(author))
    gone = {"d0/sub/f0.bin", "d1/sub/f1.bin"} | {
        f"d3/sub/{f.name}" for f in (src / "d3" / "sub").iterdir()
    }
    assert gone <= _cached_files(local_store, src)
    (src / "d0" / "sub" / "f0.bin").unlink()  # in a folder listed whole
    (src / "d1" / "sub" / "f1.bin").unlink()  # listed itself
    for f in (src / "d3" / "sub").iterdir():  # in a folder listed, and gone
        f.unlink()
    (src / "d3" / "sub").rmdir()
    repo.upload_paths(str(src), ["d0", "d1/sub/f1.bin", "d3/sub"], _opts(author))
    on_disk = {rel for rel, what in describe_tree(src).items() if what[0] == "file"}
    assert _cached_files(local_store, src) == on_disk


def test_a_listed_file_whose_folders_are_gone_takes_them_along(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    (src / "gone" / "deeper").mkdir(parents=True)
    (src / "gone" / "deeper" / "f.txt").write_text("f")
    repo.upload(str(src), _opts(author))
    for sub in ("d1/sub", "gone"):
        for found in sorted((src / sub).rglob("*"), reverse=True):
            found.unlink() if found.is_file() else found.rmdir()
        (src / sub).rmdir()
    listed = ["gone/deeper/f.txt", *(f"d1/sub/f{i}.bin" for i in range(1, 40, 4))]
    partial = repo.upload_paths(str(src), listed, _opts(author, "partial"))
    full = Repository.create(local_store, "full", "", author).upload(str(src), _opts(author))
    assert partial.bundle.tree == full.bundle.tree


def test_listed_paths_need_a_branch_head(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = _tree(tmp_path / "src")
    repo.upload(str(src), _opts(author))
    typo = UploadOptions("m", author, branch="mian")
    with pytest.raises(InvalidArgument, match="branch mian of repo r has no bundle"):
        repo.upload_paths(str(src), ["top.csv"], typo)
    assert [b.name for b in repo.branches()] == ["main"]

"""The Repository API over memory and local stores: the verbs, end to end."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import msgspec
import pytest

from datamon import Author, Change, Repository, Store, UploadOptions
from datamon.api import download as download_module
from datamon.api.paths import TreeGuard
from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.index import load_pack_index
from datamon.cafs.layout import index_key, pack_id_of, pack_key
from datamon.core.codecs import to_json
from datamon.core.model import (
    FORMAT_VERSION,
    Bundle,
    ChunkerParams,
    ChunkRef,
    Entry,
    Kind,
    StoreConfig,
)
from datamon.errors import (
    AccessDenied,
    AmbiguousId,
    BranchExists,
    BranchNotFound,
    BundleNotFound,
    ChecksumMismatch,
    CorruptObject,
    DatamonError,
    DestinationNotEmpty,
    IntegrityError,
    InvalidArgument,
    InvalidName,
    LabelNotFound,
    ObjectNotFound,
    PackMissing,
    PathNotInBundle,
    RepoExists,
    RepoNotFound,
    SourceUnreadable,
    StorageError,
    UnsafePath,
)
from datamon.metadata import trees as trees_module
from datamon.metadata.layout import CONFIG, tree_key
from datamon.storage.local import LocalBackend
from datamon.storage.memory import MemoryBackend
from datamon.testing.workloads import (
    BASE_MTIME_NS,
    describe_tree,
    insert_bytes,
    mixed_tree,
    random_bytes,
    text_bytes,
    write_tree,
)

ADDED, DELETED, MODIFIED = "added", "deleted", "modified"


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest) -> Store:
    fixture = "mem_store" if request.param == "memory" else "local_store"
    found: Store = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def repo(store: Store, author: Author) -> Repository:
    return Repository.create(store, "dataset", "test data", author)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    mixed_tree(tmp_path / "src", seed=1)
    return tmp_path / "src"


def _opts(author: Author, message: str = "msg", **kw: object) -> UploadOptions:
    return UploadOptions(message, author, **kw)  # type: ignore[arg-type]


def _changes(changes: Iterable[Change]) -> set[tuple[str, str]]:
    return {(c.status, c.path) for c in changes}


def _local_root(store: Store) -> Path:
    assert isinstance(store.blob, LocalBackend)
    return store.blob.root


# upload and download --------------------------------------------------------------------


def test_roundtrip(repo: Repository, src: Path, tmp_path: Path, author: Author) -> None:
    result = repo.upload(str(src), _opts(author, "first"))
    dest = tmp_path / "dest"
    downloaded = repo.download(result.bundle_id, str(dest))
    assert describe_tree(dest) == describe_tree(src)  # content, modes, ns mtimes, links, dirs
    files = [p for p, d in describe_tree(src).items() if d[0] == "file"]
    assert downloaded.files == len(files)
    bundle = result.bundle
    assert bundle.files == len(files)
    assert bundle.size == sum(os.path.getsize(src / p) for p in files)
    assert bundle.message == "first"
    assert bundle.author == author
    assert bundle.parents == ()
    assert bundle.branch == "main"
    assert result.bytes_read == bundle.size
    assert result.new_chunks < result.chunks  # the file of zeros repeats one chunk
    assert result.packs_written >= 1
    assert repo.bundle(result.bundle_id) == bundle


def test_roundtrip_many_packs(tmp_path: Path, author: Author) -> None:
    meta = MemoryBackend("small-packs")
    store = _store_with(meta, pack_size=100_000)
    repo = Repository.create(store, "r", "", author)
    files = {f"f{i}.bin": random_bytes(i, 150_000 + i * 7_000) for i in range(8)}
    files["text.csv"] = text_bytes(9, 900_000)
    write_tree(tmp_path / "src", files)
    result = repo.upload(str(tmp_path / "src"), _opts(author, concurrency=3))
    assert result.packs_written > 5
    assert len(result.bundle.packs) == result.packs_written
    repo.download(result.bundle_id, str(tmp_path / "dest"), concurrency=3)
    assert describe_tree(tmp_path / "dest") == describe_tree(tmp_path / "src")
    # A fresh machine (empty local cache) finds the chunks through the pack indexes.
    store.close()
    fresh = Store(meta, cache=tmp_path / "other-cache")
    Repository(fresh, "r").download(result.bundle_id, str(tmp_path / "again"))
    assert describe_tree(tmp_path / "again") == describe_tree(tmp_path / "src")


def test_files_listing(repo: Repository, src: Path, author: Author) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    infos = {f.path: f for f in repo.files(bid)}
    expected = {p: d for p, d in describe_tree(src).items() if d[0] != "dir"}
    assert set(infos) == set(expected)
    readme = infos["README.md"]
    assert readme.kind == Kind.FILE
    assert readme.size == (src / "README.md").stat().st_size
    assert readme.mtime_ns == (src / "README.md").stat().st_mtime_ns
    assert infos["bin/run.sh"].mode == 0o755
    assert infos["link-to-readme"].kind == Kind.SYMLINK
    assert infos["link-to-readme"].target == "README.md"
    assert [f.path for f in repo.files(bid)] == [p for p, _e in _walk_non_dirs(repo, bid)]


def _walk_non_dirs(repo: Repository, bid: str) -> list[tuple[str, Entry]]:
    tree = bytes.fromhex(repo.bundle(bid).tree)
    return [(p, e) for p, e in repo.store.trees.walk(tree) if e.kind != Kind.DIR]


def test_empty_tree(repo: Repository, tmp_path: Path, author: Author) -> None:
    (tmp_path / "nothing").mkdir()
    result = repo.upload(str(tmp_path / "nothing"), _opts(author))
    assert (result.bundle.files, result.bundle.size, result.chunks) == (0, 0, 0)
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_into_existing_empty_folder(
    repo: Repository, src: Path, tmp_path: Path, author: Author
) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    (tmp_path / "dest").mkdir()
    repo.download(bid, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)


def test_tree_is_independent_of_concurrency(
    store: Store, src: Path, author: Author, tmp_path: Path
) -> None:
    one = Repository.create(store, "one", "", author)
    many = Repository.create(store, "many", "", author)
    a = one.upload(str(src), _opts(author, concurrency=1))
    b = many.upload(str(src), _opts(author, concurrency=8))
    assert a.bundle.tree == b.bundle.tree
    assert a.chunks == b.chunks


def test_reupload_unchanged_stores_nothing(repo: Repository, src: Path, author: Author) -> None:
    first = repo.upload(str(src), _opts(author, "one"))
    second = repo.upload(str(src), _opts(author, "two"))
    assert second.chunks == first.chunks
    assert second.new_chunks == 0
    assert second.bytes_stored == 0
    assert second.packs_written == 0
    assert second.trees_written == 0
    assert second.bundle.tree == first.bundle.tree
    assert second.bundle_id != first.bundle_id
    assert second.bundle.parents == (first.bundle_id,)
    assert set(second.bundle.packs) == set(first.bundle.packs)


def test_unchanged_files_are_not_read_again(
    repo: Repository,
    src: Path,
    author: Author,
    settled: None,
    opened: list[str],
) -> None:
    first = repo.upload(str(src), _opts(author))
    opened.clear()
    second = repo.upload(str(src), _opts(author))
    assert opened == []
    assert second.bundle.tree == first.bundle.tree
    assert second.chunks == first.chunks
    assert second.bytes_read == first.bytes_read
    assert (first.bytes_unchanged, second.bytes_unchanged) == (0, first.bytes_read)
    assert second.new_chunks == 0

    # Same size, same mtime, new content: the ctime and inode still give it away.
    target = src / "data" / "nested" / "deeper" / "big.bin"
    st = target.stat()
    target.write_bytes(random_bytes(99, st.st_size))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = repo.upload(str(src), _opts(author))
    assert opened == [str(target)]
    assert third.new_chunks > 0
    repo.download(third.bundle_id, str(src.parent / "dest"))
    assert describe_tree(src.parent / "dest") == describe_tree(src)


def test_stat_cache_does_not_trust_chunks_the_store_lost(
    store: Store, tmp_path: Path, author: Author, settled: None
) -> None:
    repo = Repository.create(store, "r", "", author)
    write_tree(tmp_path / "src", {"a.bin": random_bytes(5, 300_000)})
    first = repo.upload(str(tmp_path / "src"), _opts(author))
    for pack in first.bundle.packs:  # as if the packs were never stored
        store.blob.delete(pack_key(pack))
        store.blob.delete(index_key(pack))
    second = repo.upload(str(tmp_path / "src"), _opts(author))
    assert second.new_chunks == first.new_chunks
    repo.download(second.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(tmp_path / "src")


def test_small_change_stores_few_chunks(repo: Repository, tmp_path: Path, author: Author) -> None:
    src = tmp_path / "src"
    write_tree(src, {"big.bin": random_bytes(1, 10_000_000), "other/x.txt": b"x"})
    first = repo.upload(str(src), _opts(author))
    insert_bytes(src / "big.bin", 5_000_000, b"inserted in the middle")
    second = repo.upload(str(src), _opts(author))
    assert first.chunks > 30
    assert 1 <= second.new_chunks <= 3
    assert second.trees_written == 1  # only the root changed; other/ is shared
    dest = tmp_path / "dest"
    repo.download(second.bundle_id, str(dest))
    assert (dest / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_dedup_across_repos(store: Store, src: Path, tmp_path: Path, author: Author) -> None:
    first = Repository.create(store, "first", "", author).upload(str(src), _opts(author))
    other = Repository.create(store, "second", "", author)
    second = other.upload(str(src), _opts(author))
    assert first.new_chunks > 0
    assert second.new_chunks == 0
    assert second.packs_written == 0
    assert second.bundle.packs == first.bundle.packs
    other.download(second.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(src)
    assert other.verify(second.bundle_id).ok


def test_dedup_within_one_upload(repo: Repository, tmp_path: Path, author: Author) -> None:
    data = random_bytes(3, 400_000)
    write_tree(tmp_path / "src", {f"copy{i}/same.bin": data for i in range(5)})
    result = repo.upload(str(tmp_path / "src"), _opts(author))
    assert result.chunks == 5 * (result.chunks // 5)
    assert result.new_chunks == result.chunks // 5
    assert result.bytes_stored < len(data) * 1.1


# labels, branches, history --------------------------------------------------------------


def test_labels_and_branches(repo: Repository, src: Path, author: Author) -> None:
    first = repo.upload(str(src), _opts(author, "one", label="latest"))
    (src / "new.txt").write_text("new")
    second = repo.upload(str(src), _opts(author, "two", label="latest"))
    assert second.bundle.parents == (first.bundle_id,)
    label = repo.label("latest")
    assert label.bundle == second.bundle_id
    assert [m.bundle for m in label.history] == [first.bundle_id, second.bundle_id]
    assert [m.previous for m in label.history] == [None, first.bundle_id]
    assert [r.name for r in repo.labels()] == ["latest"]
    assert [bid for bid, _b in repo.log("main")] == [second.bundle_id, first.bundle_id]
    assert [bid for bid, _b in repo.bundles()] == [first.bundle_id, second.bundle_id]
    assert repo.resolve(label="latest") == second.bundle_id
    assert repo.resolve(branch="main") == second.bundle_id
    assert repo.resolve(bundle=first.bundle_id[:12]) == first.bundle_id
    assert repo.resolve(bundle=first.bundle_id.upper()) == first.bundle_id

    pinned = repo.set_label("stable", first.bundle_id[:10], author)
    assert pinned.bundle == first.bundle_id
    assert pinned.history[0].author == author.email
    assert [r.name for r in repo.labels()] == ["latest", "stable"]

    dev = repo.create_branch("dev", first.bundle_id, author)
    assert dev.bundle == first.bundle_id
    with pytest.raises(BranchExists):
        repo.create_branch("dev", second.bundle_id, author)
    third = repo.upload(str(src), _opts(author, "three", branch="dev"))
    assert third.bundle.parents == (first.bundle_id,)
    assert third.bundle.branch == "dev"
    assert [b for b, _ in repo.log("dev")] == [third.bundle_id, first.bundle_id]
    assert [b for b, _ in repo.log("main")] == [second.bundle_id, first.bundle_id]
    assert [r.name for r in repo.branches()] == ["dev", "main"]
    assert [b for b, _ in repo.bundles()] == [b.bundle_id for b in (first, second, third)]


def test_new_branch_starts_without_parent(repo: Repository, src: Path, author: Author) -> None:
    repo.upload(str(src), _opts(author))
    other = repo.upload(str(src), _opts(author, branch="experiment"))
    assert other.bundle.parents == ()


def test_resolve_needs_exactly_one_name(repo: Repository) -> None:
    with pytest.raises(DatamonError):
        repo.resolve()
    with pytest.raises(DatamonError):
        repo.resolve(bundle="ab", label="x")


def test_ambiguous_prefix(repo: Repository, tmp_path: Path, author: Author) -> None:
    write_tree(tmp_path / "src", {"a": b"a"})
    ids = [repo.upload(str(tmp_path / "src"), _opts(author, f"m{i}")).bundle_id for i in range(20)]
    first = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) > 1)
    with pytest.raises(AmbiguousId) as info:
        repo.resolve(bundle=first)
    assert set(info.value.candidates) == {i for i in ids if i.startswith(first)}


def test_unknown_names(
    store: Store, repo: Repository, src: Path, tmp_path: Path, author: Author
) -> None:
    with pytest.raises(RepoNotFound):
        Repository(store, "ghost")
    with pytest.raises(RepoExists):
        Repository.create(store, "dataset", "again", author)
    with pytest.raises(InvalidName):
        Repository.create(store, "bad/name", "", author)
    with pytest.raises(LabelNotFound):
        repo.label("nope")
    with pytest.raises(LabelNotFound):
        repo.resolve(label="nope")
    with pytest.raises(BranchNotFound):
        repo.resolve(branch="nope")
    with pytest.raises(BranchNotFound):
        list(repo.log("nope"))
    bid = repo.upload(str(src), _opts(author)).bundle_id
    missing = "0" * 40 if not bid.startswith("0") else "f" * 40
    for name in [missing, missing[:8], "xyz", "../etc"]:
        with pytest.raises(BundleNotFound):
            repo.resolve(bundle=name)
    with pytest.raises(BundleNotFound):
        repo.download(missing, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    with pytest.raises(BundleNotFound):
        repo.set_label("x", missing, author)
    with pytest.raises(BundleNotFound):
        repo.create_branch("x", missing, author)
    with pytest.raises(InvalidName):
        repo.upload(str(src), _opts(author, branch="bad name"))
    with pytest.raises(InvalidName):
        repo.upload(str(src), _opts(author, label="../x"))
    with pytest.raises(InvalidName):
        repo.set_label("a/b", bid, author)
    assert len(repo.bundles()) == 1


def test_upload_to_missing_repo(store: Store, repo: Repository, src: Path, author: Author) -> None:
    from datamon.api.upload import upload

    with pytest.raises(RepoNotFound):
        upload(store, "ghost", str(src), _opts(author))


def test_interrupted_commit_is_invisible(
    repo: Repository, src: Path, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bundle object without a ref (the writer died before moving the branch) is not listed.
    ok = repo.upload(str(src), _opts(author))

    def die(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(repo.store.refs, "move", die)
    with pytest.raises(KeyboardInterrupt):
        repo.upload(str(src), _opts(author, "dies"))
    monkeypatch.undo()
    assert len(repo.store.bundles.ids(repo.name)) == 2  # the orphan exists...
    assert [b for b, _ in repo.bundles()] == [ok.bundle_id]  # ...but is not visible
    assert repo.resolve(branch="main") == ok.bundle_id
    orphan = next(b for b in repo.store.bundles.ids(repo.name) if b != ok.bundle_id)
    with pytest.raises(BundleNotFound):
        repo.resolve(bundle=orphan)
    # Nor is it read by its full id, in another process or in this one.
    assert repo.store.bundles.get(repo.name, orphan).message == "dies"
    for reader in (Repository(repo.store, repo.name), repo):
        with pytest.raises(BundleNotFound, match=orphan):
            reader.bundle(orphan)
        with pytest.raises(BundleNotFound):
            reader.download(orphan, str(tmp_path / "orphan"))
        assert not (tmp_path / "orphan").exists()
        assert reader.bundle(ok.bundle_id).message == "msg"
    # Once a ref names it (moved there by hand, say), it is read.
    repo.store.refs.move(repo.name, "label", "kept", orphan, author.email)
    assert repo.bundle(orphan).message == "dies"


def test_an_upload_to_a_store_of_the_older_branch_folder_goes_on_from_its_head(
    store: Store, repo: Repository, src: Path, author: Author
) -> None:
    first = repo.upload(str(src), _opts(author, "first")).bundle_id
    key = "branches/dataset/main.json"
    store.meta.put("branchs/dataset/main.json", store.meta.get(key))
    store.meta.delete(key)  # as a store written before 2026-11-28 has it
    assert [bid for bid, _b in repo.bundles()] == [first]
    (src / "added.txt").write_text("more")
    second = repo.upload(str(src), _opts(author, "second")).bundle_id
    assert repo.bundle(second).parents == (first,)
    assert [bid for bid, _b in repo.log("main")] == [second, first]


# errors on upload and download ----------------------------------------------------------


def test_download_to_non_empty_destination(
    repo: Repository, src: Path, tmp_path: Path, author: Author
) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(DestinationNotEmpty) as info:
        repo.download(bid, str(dest))
    assert info.value.path == str(dest)
    assert [p.name for p in dest.iterdir()] == ["precious.txt"]
    assert (dest / "precious.txt").read_text() == "keep me"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DatamonError):  # a file is no folder to download into
        repo.download(bid, str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "x"


def test_unreadable_source(repo: Repository, tmp_path: Path, author: Author) -> None:
    src = tmp_path / "src"
    write_tree(src, {"ok.txt": b"fine", "locked/secret.txt": b"no"})
    os.chmod(src / "locked", 0)
    try:
        if os.access(src / "locked", os.R_OK):
            pytest.skip("running with privileges that read any folder")
        with pytest.raises(SourceUnreadable) as info:
            repo.upload(str(src), _opts(author))
        assert "locked" in info.value.path
    finally:
        os.chmod(src / "locked", 0o755)
    assert repo.bundles() == []


def test_unreadable_file(repo: Repository, tmp_path: Path, author: Author) -> None:
    src = tmp_path / "src"
    write_tree(src, {"ok.txt": b"fine", "secret.txt": b"no"})
    os.chmod(src / "secret.txt", 0)
    if os.access(src / "secret.txt", os.R_OK):
        pytest.skip("running with privileges that read any file")
    with pytest.raises(SourceUnreadable) as info:
        repo.upload(str(src), _opts(author))
    assert info.value.path.endswith("secret.txt")
    assert repo.bundles() == []


@pytest.mark.parametrize("count", [3, 2_500], ids=["threads", "worker processes"])
def test_a_file_removed_after_the_scan_fails_the_upload_by_name(
    repo: Repository, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    from datamon.api import scan as scan_module

    src = tmp_path / "src"
    write_tree(src, {f"f{i:04}.txt": b"%d" % i for i in range(count)})
    gone = src / "f0001.txt"
    finish = scan_module.TreeScan.finish

    def finish_then_remove(self: scan_module.TreeScan) -> scan_module.LocalDir:
        top = finish(self)
        gone.unlink()
        return top

    monkeypatch.setattr(scan_module.TreeScan, "finish", finish_then_remove)
    with pytest.raises(SourceUnreadable) as info:
        repo.upload(str(src), _opts(author))
    assert info.value.path == str(gone)
    assert "removed while the upload ran; nothing was committed" in str(info.value)
    assert repo.bundles() == []


def test_missing_or_non_folder_source(repo: Repository, tmp_path: Path, author: Author) -> None:
    with pytest.raises(SourceUnreadable):
        repo.upload(str(tmp_path / "missing"), _opts(author))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceUnreadable):
        repo.upload(str(tmp_path / "file"), _opts(author))
    assert repo.bundles() == []
    assert repo.branches() == []


# partial downloads ----------------------------------------------------------------------


def test_name_filter(repo: Repository, src: Path, tmp_path: Path, author: Author) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    dest = tmp_path / "dest"
    result = repo.download(bid, str(dest), name_filter=r"\.csv$")
    got = {p for p, d in describe_tree(dest).items() if d[0] != "dir"}
    assert got == {"data/read-only.csv", "data/nested/deeper/text.csv"}
    assert result.files == 2
    for path in got:
        assert (dest / path).read_bytes() == (src / path).read_bytes()
    # The folders holding them have the bundle's modes and times; no other is made.
    folders = {p for p, d in describe_tree(dest).items() if d[0] == "dir"}
    assert folders == {"data", "data/nested", "data/nested/deeper"}
    for path in folders:
        here, there = os.stat(dest / path), os.stat(src / path)
        assert (here.st_mode, here.st_mtime_ns) == (there.st_mode, there.st_mtime_ns), path
    wanted = {p for p in describe_tree(src) if re.search("link", p)}
    repo.download(bid, str(tmp_path / "links"), name_filter="link")
    assert {p for p, d in describe_tree(tmp_path / "links").items() if d[0] != "dir"} == wanted


def test_download_file(repo: Repository, src: Path, tmp_path: Path, author: Author) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    out = tmp_path / "out"
    target = repo.download_file(bid, "data/nested/deeper/big.bin", str(out))
    assert target == str(out / "data/nested/deeper/big.bin")
    assert Path(target).read_bytes() == (src / "data/nested/deeper/big.bin").read_bytes()
    assert Path(target).stat().st_mode & 0o777 == 0o640
    link = repo.download_file(bid, "link-to-readme", str(out))
    assert os.readlink(link) == "README.md"
    with pytest.raises(DestinationNotEmpty):
        repo.download_file(bid, "data/nested/deeper/big.bin", str(out))
    with pytest.raises(PathNotInBundle):
        repo.download_file(bid, "data/nope.txt", str(out))
    with pytest.raises(PathNotInBundle):
        repo.download_file(bid, "README.md/inner", str(out))


def test_download_folder_of_bundle(
    repo: Repository, src: Path, tmp_path: Path, author: Author
) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    target = repo.download_file(bid, "data/nested", str(tmp_path / "out"))
    assert describe_tree(Path(target)) == describe_tree(src / "data/nested")


# diff and update ------------------------------------------------------------------------


def _two_versions(root: Path) -> tuple[Path, Path]:
    v1, v2 = root / "v1", root / "v2"
    common = {"same.txt": b"same", "dir/keep.bin": random_bytes(1, 70_000)}
    write_tree(
        v1,
        {
            **common,
            "edit.txt": b"before",
            "gone.txt": b"bye",
            "dir/gone-too.txt": b"bye",
            "becomes-dir": b"file",
            "olddir/a.txt": b"a",
            "olddir/sub/b.txt": b"b",
        },
    )
    write_tree(
        v2,
        {
            **common,
            "edit.txt": b"after!",
            "dir/new.txt": b"hello",
            "becomes-dir/inner.txt": b"now a folder",
            "newdir/x/y.txt": b"y",
        },
    )
    os.symlink("same.txt", v1 / "link")
    os.symlink("edit.txt", v2 / "link")
    os.symlink("same.txt", v1 / "stable-link")
    os.symlink("same.txt", v2 / "stable-link")
    for link in [v1 / "link", v2 / "link", v1 / "stable-link", v2 / "stable-link"]:
        os.utime(link, ns=(BASE_MTIME_NS, BASE_MTIME_NS), follow_symlinks=False)
    return v1, v2


EXPECTED_DIFF = {
    (MODIFIED, "edit.txt"),
    (MODIFIED, "link"),
    (DELETED, "gone.txt"),
    (DELETED, "dir/gone-too.txt"),
    (ADDED, "dir/new.txt"),
    (DELETED, "becomes-dir"),
    (ADDED, "becomes-dir/inner.txt"),
    (DELETED, "olddir/a.txt"),
    (DELETED, "olddir/sub/b.txt"),
    (ADDED, "newdir/x/y.txt"),
}


def test_diff_bundles(repo: Repository, tmp_path: Path, author: Author) -> None:
    v1, v2 = _two_versions(tmp_path)
    a = repo.upload(str(v1), _opts(author)).bundle_id
    b = repo.upload(str(v2), _opts(author)).bundle_id
    changes = list(repo.diff(a, b))
    assert all(isinstance(c, Change) for c in changes)
    assert _changes(changes) == EXPECTED_DIFF
    assert len(changes) == len(EXPECTED_DIFF)
    kinds = {c.path: c.kind for c in changes}
    assert kinds["link"] == Kind.SYMLINK
    assert kinds["becomes-dir"] == Kind.FILE
    swap = {ADDED: DELETED, DELETED: ADDED, MODIFIED: MODIFIED}
    assert _changes(repo.diff(b, a)) == {(swap[s], p) for s, p in EXPECTED_DIFF}
    assert list(repo.diff(a, a)) == []


def test_diff_only_touches_changed_subtrees(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    src = tmp_path / "src"
    write_tree(src, {f"big/{i:03d}.txt": b"%d" % i for i in range(300)} | {"top.txt": b"1"})
    a = repo.upload(str(src), _opts(author)).bundle_id
    (src / "top.txt").write_bytes(b"2")
    b = repo.upload(str(src), _opts(author)).bundle_id
    store = repo.store
    big = store.trees.lookup(bytes.fromhex(repo.bundle(a).tree), "big").tree
    store.meta.delete(tree_key(big.hex()))  # unreadable, yet shared: diff must not open it
    assert _changes(repo.diff(a, b)) == {(MODIFIED, "top.txt")}


def test_diff_local(repo: Repository, tmp_path: Path, author: Author) -> None:
    v1, v2 = _two_versions(tmp_path)
    a = repo.upload(str(v1), _opts(author)).bundle_id
    assert list(repo.diff_local(a, str(v1))) == []
    # From the bundle to the folder: what the folder added, lost and changed.
    assert _changes(repo.diff_local(a, str(v2))) == EXPECTED_DIFF


def test_diff_local_detects_same_size_edit(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    write_tree(tmp_path / "src", {"f.txt": b"aaaa"})
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    (tmp_path / "src" / "f.txt").write_bytes(b"bbbb")
    assert _changes(repo.diff_local(bid, str(tmp_path / "src"))) == {(MODIFIED, "f.txt")}


def test_update(repo: Repository, tmp_path: Path, author: Author) -> None:
    v1, v2 = _two_versions(tmp_path)
    a = repo.upload(str(v1), _opts(author)).bundle_id
    b = repo.upload(str(v2), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(a, str(work))
    inodes = {p: (work / p).stat().st_ino for p in ["same.txt", "dir/keep.bin"]}
    changes = repo.update(b, str(work))
    assert _changes(changes) == _invert(EXPECTED_DIFF)
    # Unchanged files were not rewritten.
    assert {p: (work / p).stat().st_ino for p in inodes} == inodes
    reference = tmp_path / "reference"
    repo.download(b, str(reference))
    assert describe_tree(work) == describe_tree(reference)
    assert list(repo.diff_local(b, str(work))) == []


def test_update_replaces_a_folder_by_a_file(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    # Found broken: update unlinked the folder's files, then failed writing the file
    # with DestinationNotEmpty because the (now empty) folder stayed.
    v1, v2 = _two_versions(tmp_path)
    a = repo.upload(str(v1), _opts(author)).bundle_id
    b = repo.upload(str(v2), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(b, str(work))  # becomes-dir/ is a folder here, a file in bundle a
    repo.update(a, str(work))
    assert list(repo.diff_local(a, str(work))) == []
    reference = tmp_path / "reference"
    repo.download(a, str(reference))
    assert describe_tree(work) == describe_tree(reference)


def test_update_reproduces_empty_folders(repo: Repository, tmp_path: Path, author: Author) -> None:
    # Found broken: empty folders of the bundle were never created, and folders that
    # update emptied were left behind.
    src = tmp_path / "src"
    write_tree(src, {"a/f.txt": b"x", "extra/deeper/g.txt": b"y"})
    first = repo.upload(str(src), _opts(author)).bundle_id
    shutil.rmtree(src / "extra")
    (src / "new-empty").mkdir()
    second = repo.upload(str(src), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(first, str(work))
    repo.update(second, str(work))
    reference = tmp_path / "reference"
    repo.download(second, str(reference))
    assert describe_tree(work) == describe_tree(reference)
    repo.update(first, str(work))
    assert not (work / "new-empty").exists()
    assert (work / "extra" / "deeper" / "g.txt").read_bytes() == b"y"


def test_update_restores_modes(repo: Repository, tmp_path: Path, author: Author) -> None:
    write_tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\n"})
    os.chmod(tmp_path / "src" / "run.sh", 0o755)
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(bid, str(work))
    os.chmod(work / "run.sh", 0o600)
    assert _changes(repo.diff_local(bid, str(work))) == {(MODIFIED, "run.sh")}
    repo.update(bid, str(work))
    assert (work / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert list(repo.diff_local(bid, str(work))) == []


def test_update_restores_modification_times(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    write_tree(tmp_path / "src", {"a.txt": b"same\n"})
    os.symlink("a.txt", tmp_path / "src" / "link")
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(bid, str(work))
    want = {name: os.lstat(work / name).st_mtime_ns for name in ("a.txt", "link")}
    for name in want:
        os.utime(work / name, ns=(1, 1), follow_symlinks=False)
    assert repo.update(bid, str(work)) == []  # nothing to write: the content is the same
    assert {name: os.lstat(work / name).st_mtime_ns for name in want} == want
    again = repo.upload(str(work), _opts(author, "again"))
    assert again.bundle.tree == repo.bundle(bid).tree


def test_update_of_an_unchanged_folder_writes_nothing(
    repo: Repository, src: Path, tmp_path: Path, author: Author
) -> None:
    bid = repo.upload(str(src), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(bid, str(work))
    before = describe_tree(work)
    inodes = {p: os.lstat(work / p).st_ino for p in before}
    assert repo.update(bid, str(work)) == []
    assert describe_tree(work) == before
    assert {p: os.lstat(work / p).st_ino for p in before} == inodes


def test_update_never_removes_through_a_local_symlink(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"d/f": b"in d", "shared/f": b"in shared"})
    bid = repo.upload(str(src), _opts(author)).bundle_id
    work = tmp_path / "work"
    repo.download(bid, str(work))
    shutil.rmtree(work / "d")
    os.symlink("shared", work / "d")  # the user replaced a folder by a link to a sibling
    repo.update(bid, str(work))
    assert (work / "shared" / "f").exists()
    assert (work / "shared" / "f").read_bytes() == b"in shared"
    assert list(repo.diff_local(bid, str(work))) == []


def test_update_never_deletes_outside_the_folder(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    # Found broken: update removed 'd/f' through the local links, deleting outer/f.
    src = tmp_path / "src"
    write_tree(src, {"d/f": b"bundle"})
    bid = repo.upload(str(src), _opts(author)).bundle_id
    precious = tmp_path / "outer" / "f"
    write_tree(tmp_path / "outer", {"f": b"not yours"})
    work = tmp_path / "outer" / "work"
    (work / "x").mkdir(parents=True)
    os.symlink("..", work / "x" / "e")
    os.symlink("x/e/..", work / "d")  # resolves to tmp_path/outer
    with contextlib.suppress(DatamonError):
        repo.update(bid, str(work))
    assert precious.exists()
    assert precious.read_bytes() == b"not yours"


def test_diff_bundles_reports_mode_changes(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    # Found broken: diff compared only chunk ids, so a chmod made a new tree but no change.
    write_tree(tmp_path / "src", {"run.sh": b"#!/bin/sh\n"})
    a = repo.upload(str(tmp_path / "src"), _opts(author))
    os.chmod(tmp_path / "src" / "run.sh", 0o755)
    b = repo.upload(str(tmp_path / "src"), _opts(author))
    assert a.bundle.tree != b.bundle.tree
    assert _changes(repo.diff(a.bundle_id, b.bundle_id)) == {(MODIFIED, "run.sh")}


def _invert(changes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    # diff_local goes from the bundle to the folder: a file the folder lacks is "deleted".
    swap = {ADDED: DELETED, DELETED: ADDED, MODIFIED: MODIFIED}
    return {(swap[s], p) for s, p in changes}


# verification and damage ----------------------------------------------------------------


@pytest.fixture
def damaged_setup(
    local_store: Store, tmp_path: Path, author: Author
) -> tuple[Repository, str, Path]:
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    # Incompressible content is stored raw: a flipped byte lands in the data itself.
    write_tree(src, {f"f{i}.bin": random_bytes(i, 200_000) for i in range(4)})
    bid = repo.upload(str(src), _opts(author)).bundle_id
    return repo, bid, src


def _pack_path(store: Store) -> Path:
    packs = list(store.blob.list("packs/"))
    assert len(packs) == 1
    return _local_root(store) / packs[0]


def _flip_in_chunk_of(store: Store, repo: Repository, bid: str, path: str, nth: int = 0) -> str:
    """Flip a byte in the middle of the ``nth`` chunk of ``path``; returns the chunk id."""
    pack = _pack_path(store)
    index = load_pack_index(store.blob, pack_id_of(str(pack)))
    entry = repo.store.trees.lookup(bytes.fromhex(repo.bundle(bid).tree), path)
    target = entry.chunks[nth].id
    where = next(e for e in index.entries if e.id == target)
    data = bytearray(pack.read_bytes())
    data[where.offset + where.length // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    return target.hex()


def test_verify_healthy(repo: Repository, src: Path, author: Author) -> None:
    result = repo.upload(str(src), _opts(author))
    report = repo.verify(result.bundle_id)
    assert report.ok
    assert report.problems == []
    assert report.files == result.bundle.files
    assert report.bytes <= result.bundle.size
    assert report.chunks == result.new_chunks  # each distinct chunk read once


def test_verify_counts_each_good_chunk_once_when_a_later_one_is_damaged(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    # Found by review: the good chunks before the damaged one were counted when the whole
    # file was read, and again when it was read a chunk at a time to name the bad one.
    repo = Repository.create(local_store, "r", "", author)
    write_tree(tmp_path / "src", {"a.bin": random_bytes(21, 1_500_000)})
    result = repo.upload(str(tmp_path / "src"), _opts(author))
    entry = repo.store.trees.lookup(bytes.fromhex(result.bundle.tree), "a.bin")
    chunks = len(entry.chunks)
    assert chunks >= 4
    _flip_in_chunk_of(repo.store, repo, result.bundle_id, "a.bin", nth=2)
    report = repo.verify(result.bundle_id)
    assert len(report.problems) == 1
    assert report.chunks == chunks - 1


def test_verify_detects_corrupted_pack(damaged_setup: tuple[Repository, str, Path]) -> None:
    repo, bid, _src = damaged_setup
    chunk = _flip_in_chunk_of(repo.store, repo, bid, "f2.bin")
    report = repo.verify(bid)
    assert not report.ok
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith("f2.bin: ")
    assert chunk in problem
    assert "packs/" in problem


def test_a_second_verify_in_one_thread_sees_a_shared_frame_damaged_since_the_first(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    # Files under 512 bytes share zstd frames, and the reader remembers, in each thread,
    # the last frames it opened: a verify must not take them from that memory.
    repo = Repository.create(local_store, "r", "", author)
    write_tree(tmp_path / "src", {f"t{i}.txt": (f"row {i}\n" * 40).encode() for i in range(6)})
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    assert repo.verify(bid).ok
    pack = _pack_path(repo.store)
    index = load_pack_index(repo.store.blob, pack_id_of(str(pack)))
    frame = next(e for e in index.entries if e.at > 0)  # a chunk after another in its frame
    data = bytearray(pack.read_bytes())
    data[frame.offset + frame.length // 2] ^= 0x55
    pack.write_bytes(bytes(data))
    report = repo.verify(bid)
    assert not report.ok
    in_frame = {frame_file(repo, bid, e.id) for e in index.entries if e.offset == frame.offset}
    assert report.problems and {p.split(":")[0] for p in report.problems} <= in_frame


def frame_file(repo: Repository, bid: str, chunk: bytes) -> str:
    """The file of ``bid`` whose chunk is ``chunk``."""
    tree = bytes.fromhex(repo.bundle(bid).tree)
    return next(
        path for path, e in repo.store.trees.walk(tree) if e.chunks and e.chunks[0].id == chunk
    )


def test_verify_raises_what_is_no_damage(
    damaged_setup: tuple[Repository, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused reads say nothing about the bundle: not reported as damage, but raised."""
    repo, bid, _src = damaged_setup

    def refused(*_args: object, **_kw: object) -> bytes:
        raise AccessDenied("packs/..", "permission denied")

    monkeypatch.setattr(repo.store.blob, "get_range_view", refused)
    with pytest.raises(AccessDenied):
        repo.verify(bid)


def test_verify_reports_every_file_with_a_damaged_chunk(
    local_store: Store, tmp_path: Path, author: Author
) -> None:
    # Found broken: a chunk was marked checked before it was read, so a damaged chunk
    # shared by several files was reported for the first file only.
    repo = Repository.create(local_store, "r", "", author)
    data = random_bytes(11, 200_000)
    write_tree(tmp_path / "src", {"a.bin": data, "b.bin": data, "c.bin": random_bytes(12, 9)})
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    _flip_in_chunk_of(local_store, repo, bid, "a.bin")
    report = repo.verify(bid)
    damaged = {p.split(":")[0] for p in report.problems}
    # Both files would fail to download; verify must say so for both.
    for name in ["a.bin", "b.bin"]:
        with pytest.raises(ChecksumMismatch):
            repo.download_file(bid, name, str(tmp_path / f"out-{name}"))
    assert damaged == {"a.bin", "b.bin"}


def test_verify_detects_missing_pack_index(
    damaged_setup: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, bid, _src = damaged_setup
    for pack in repo.bundle(bid).packs:
        repo.store.blob.delete(index_key(pack))
    elsewhere = Repository(Store.open(str(_local_root(repo.store)), cache=tmp_path / "c2"), "r")
    with pytest.raises(ObjectNotFound):
        elsewhere.download(bid, str(tmp_path / "dest"))
    assert not elsewhere.verify(bid).ok
    assert not repo.verify(bid).ok  # the writer's own machine must see it too


def test_verify_detects_missing_pack(damaged_setup: tuple[Repository, str, Path]) -> None:
    repo, bid, _src = damaged_setup
    pack = _pack_path(repo.store)
    pack.unlink()
    report = repo.verify(bid)
    assert not report.ok
    key = pack_key(pack.name)
    files = [p for p in report.problems if not p.startswith("pack ")]
    assert len(files) == 4  # every file lived in that pack
    assert all(key in p for p in files)
    assert f"pack {pack.name}: missing from the store" in report.problems


def test_verify_detects_damaged_tree(
    damaged_setup: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, bid, _src = damaged_setup
    key = tree_key(repo.bundle(bid).tree)
    path = _local_root(repo.store) / key
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01
    path.write_bytes(bytes(data))
    report = repo.verify(bid)
    assert not report.ok
    assert key in report.problems[0]
    with pytest.raises(IntegrityError):
        repo.download(bid, str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_download_of_corrupted_pack_fails_loudly(
    damaged_setup: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, bid, src = damaged_setup
    chunk = _flip_in_chunk_of(repo.store, repo, bid, "f1.bin")
    dest = tmp_path / "dest"
    with pytest.raises((ChecksumMismatch, CorruptObject)) as info:
        repo.download(bid, str(dest), concurrency=1)
    message = str(info.value)
    assert chunk in message
    assert "packs/" in message
    # Whatever was written is right (a failed download leaves nothing at all).
    assert not (dest / "f1.bin").exists()
    for written in dest.iterdir():
        assert written.read_bytes() == (src / written.name).read_bytes()
    assert list(dest.iterdir()) == []
    with pytest.raises((ChecksumMismatch, CorruptObject)):
        repo.download_file(bid, "f1.bin", str(tmp_path / "single"))
    assert not (tmp_path / "single" / "f1.bin").exists()
    repo.download_file(bid, "f0.bin", str(tmp_path / "single"))
    assert (tmp_path / "single" / "f0.bin").read_bytes() == (src / "f0.bin").read_bytes()


def test_download_of_missing_pack(
    damaged_setup: tuple[Repository, str, Path], tmp_path: Path
) -> None:
    repo, bid, _src = damaged_setup
    pack = _pack_path(repo.store)
    pack.unlink()
    with pytest.raises(ObjectNotFound) as info:
        repo.download(bid, str(tmp_path / "dest"))
    assert pack.name in str(info.value)
    assert list((tmp_path / "dest").iterdir()) == []


def test_truncated_pack(damaged_setup: tuple[Repository, str, Path], tmp_path: Path) -> None:
    repo, bid, _src = damaged_setup
    pack = _pack_path(repo.store)
    pack.write_bytes(pack.read_bytes()[:-1000])
    with pytest.raises(CorruptObject) as info:
        repo.download(bid, str(tmp_path / "dest"))
    assert "truncated" in str(info.value)
    assert not repo.verify(bid).ok


# unsafe bundles -------------------------------------------------------------------------


def _craft(store: Store, repo: Repository, entries: list[Entry], author: Author) -> str:
    """Publish a hand-made bundle on branch ``crafted``, as a hostile writer could."""
    tree = store.trees.put(entries)
    bundle = Bundle(
        format=FORMAT_VERSION,
        repo=repo.name,
        parents=(),
        message="crafted",
        author=author,
        timestamp=datetime.now(UTC),
        tree=tree.hex(),
        packs=(),
        files=len(entries),
        size=0,
    )
    bid = store.bundles.put(bundle)
    store.refs.move(repo.name, "branch", "crafted", bid, author.email)
    assert repo.resolve(branch="crafted") == bid
    return bid


def _file(name: str) -> Entry:
    return Entry(name, Kind.FILE, 0o644, 0, size=3, chunks=(ChunkRef(b"\x07" * 32, 3),))


def _link(name: str, target: str) -> Entry:
    return Entry(name, Kind.SYMLINK, 0o777, 0, target=target)


def _dir(name: str) -> Entry:
    """A folder entry, for the checks of names alone (its tree is not stored)."""
    return Entry(name, Kind.DIR, 0o755, 0, tree=bytes(32))


UNSAFE: dict[str, list[Entry]] = {
    "dotdot-file": [_file("..")],
    "dot-file": [_file(".")],
    "empty-name": [_file("")],
    "slash-in-name": [_file("a/b")],
    "nul-in-name": [_file("a\x00b")],
    "absolute-symlink": [_link("passwd", "/etc/passwd")],
    "escaping-symlink": [_link("x", "../../x")],
    "parent-symlink": [_link("up", "..")],
    "empty-symlink": [_link("nothing", "")],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_paths_are_refused(
    store: Store, repo: Repository, tmp_path: Path, author: Author, case: str
) -> None:
    entries = [_file("harmless.txt"), *UNSAFE[case]]
    bid = _craft(store, repo, entries, author)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafePath):
        repo.download(bid, str(dest))
    assert not dest.exists()
    dest.mkdir()
    with pytest.raises(UnsafePath):
        repo.download(bid, str(dest), name_filter="harmless")
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    "entries",
    [
        [_link("x", "../../x")],
        [_file("..")],
        [Entry("..", Kind.DIR, 0o755, 0), _file("ok")],
    ],
    ids=["symlink", "file", "folder"],
)
def test_unsafe_nested_entries_are_refused(
    store: Store, repo: Repository, tmp_path: Path, author: Author, entries: list[Entry]
) -> None:
    inner = store.trees.put([e for e in entries if e.kind != Kind.DIR])
    fixed = [
        Entry(e.name, e.kind, e.mode, 0, tree=inner) if e.kind == Kind.DIR else e for e in entries
    ]
    sub = store.trees.put(fixed)
    bid = _craft(store, repo, [Entry("sub", Kind.DIR, 0o755, 0, tree=sub)], author)
    with pytest.raises(UnsafePath):
        repo.download(bid, str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


def test_safe_relative_symlinks_are_kept(
    store: Store, repo: Repository, tmp_path: Path, author: Author
) -> None:
    sub = store.trees.put([_link("up", ".."), _link("sibling", "../top.txt")])
    entries = [
        _link("top.txt", "sub"),
        _link("alias", "top.txt"),  # a link to a link: allowed, it does not pass through
        _link("dotted", "./sub/./up"),
        Entry("sub", Kind.DIR, 0o755, 0, tree=sub),
    ]
    bid = _craft(store, repo, entries, author)
    repo.download(bid, str(tmp_path / "dest"))
    dest = tmp_path / "dest"
    assert os.readlink(dest / "sub" / "up") == ".."
    assert os.readlink(dest / "alias") == "top.txt"
    root = os.path.realpath(dest)
    for link in ["sub/up", "sub/sibling", "top.txt", "alias", "dotted"]:
        resolved = os.path.realpath(dest / link)
        assert resolved == root or resolved.startswith(root + os.sep), link


def test_a_symlink_whose_target_passes_through_another_uploads_and_downloads(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    # Once refused by download although upload took it, and then the whole bundle could
    # not be downloaded: the target is resolved through the bundle's other symlinks.
    src = tmp_path / "src"
    (src / "v2").mkdir(parents=True)
    (src / "v2" / "f.txt").write_text("second")
    (src / "cur").symlink_to("v2")
    (src / "latest").symlink_to("cur/f.txt")
    bid = repo.upload(str(src), _opts(author)).bundle_id
    dest = tmp_path / "dest"
    repo.download(bid, str(dest))
    assert os.readlink(dest / "cur") == "v2"
    assert os.readlink(dest / "latest") == "cur/f.txt"
    assert (dest / "latest").read_text() == "second"
    repo.download_file(bid, "latest", str(tmp_path / "one"))
    assert os.readlink(tmp_path / "one" / "latest") == "cur/f.txt"


# A bundle that is safe where names are compared exactly, and not where case is ignored:
# there 'a' is the symlink 'A' to the root, so 'l' points at the destination's parent.
FOLDING_ESCAPE = [_link("A", "."), _link("l", "a/..")]


def test_case_folding_paths_are_compared_as_such_a_file_system_compares_them() -> None:
    cases = {
        "escape": FOLDING_ESCAPE,
        # U+0390 and U+0399 U+0308 U+0301: one name to a file system that ignores case and
        # normalisation, though NFC and case folding alone tell them apart.
        "escape-by-another-spelling": [_link("\u0390", "."), _link("l", "\u0399\u0308\u0301/..")],
        "symlink-and-file": [_link("Docs", "sub"), _file("docs"), _dir("sub")],
        "decomposed-file-and-symlink": [
            _file("cafe\u0301"),
            _link("caf\u00e9", "sub"),
            _dir("sub"),
        ],
    }
    for name, entries in cases.items():
        exact, folding = TreeGuard(), TreeGuard(folds=True)
        for entry in entries:
            exact.add(entry.name, entry)
        exact.check()
        with pytest.raises(UnsafePath):
            for entry in entries:
                folding.add(entry.name, entry)
            folding.check()
            pytest.fail(f"{name}: accepted")
    # Two files (or folders) of one name there are left to the writer, which writes one and
    # refuses the other (O_EXCL): a download choosing one of them still works.
    folding = TreeGuard(folds=True)
    for entry in [_file("README"), _file("readme"), _dir("Sub"), _dir("sub")]:
        folding.add(entry.name, entry)
    folding.check()
    for again in ("README", "readme"):  # each spelling named a second time
        with pytest.raises(UnsafePath, match="names this path twice"):
            folding.add(again, _file(again))
    # An update compares and removes by exact name, and would remove one for the other.
    strict = TreeGuard(folds=True, twins=False)
    strict.add("README", _file("README"))
    with pytest.raises(UnsafePath, match="names this path and 'README', one name"):
        strict.add("readme", _file("readme"))


def test_a_bundle_unsafe_where_case_is_ignored_is_not_written_there(
    store: Store,
    repo: Repository,
    tmp_path: Path,
    author: Author,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bid = _craft(store, repo, FOLDING_ESCAPE, author)
    repo.download(bid, str(tmp_path / "exact"))  # this disk compares names exactly
    assert os.readlink(tmp_path / "exact" / "l") == "a/.."
    # A destination that ignores case (macOS's and Windows's default) cannot be made here:
    # the probe's answer is given instead.
    asked: list[str] = []

    def folds(destination: str) -> bool:
        asked.append(destination)
        return True

    monkeypatch.setattr(download_module, "folds_case", folds)
    dest = tmp_path / "folding"
    with pytest.raises(UnsafePath, match="outside the bundle"):
        repo.download(bid, str(dest))
    assert not dest.exists()
    with pytest.raises(UnsafePath):
        repo.download_file(bid, "l", str(dest))
    # Refused before the folder is touched: a folder of its own, read-only, keeps its mode
    # (an update opens every folder to writing before it changes them).
    (tmp_path / "exact" / "ro").mkdir(mode=0o555)
    (tmp_path / "exact" / "ro").chmod(0o555)
    with pytest.raises(UnsafePath):
        repo.update(bid, str(tmp_path / "exact"))
    assert os.readlink(tmp_path / "exact" / "l") == "a/.."
    assert ((tmp_path / "exact" / "ro").stat().st_mode & 0o777) == 0o555
    assert asked == [str(dest), str(dest), str(tmp_path / "exact")]


def test_an_update_where_case_is_ignored_refuses_two_files_of_one_name_there(
    store: Store,
    repo: Repository,
    tmp_path: Path,
    author: Author,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bid = _craft(store, repo, [_file("README"), _file("readme")], author)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "README").write_text("kept")
    monkeypatch.setattr(download_module, "folds_case", lambda destination: True)
    with pytest.raises(UnsafePath, match="one name on a file system that ignores case"):
        repo.update(bid, str(folder))
    assert (folder / "README").read_text() == "kept"


def test_the_case_probe_tells_what_the_file_system_does_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "probe-a").write_text("")
    (tmp_path / "caf\u00e9").write_text("")
    truth = (tmp_path / "PROBE-A").exists() or (tmp_path / "cafe\u0301").exists()
    (tmp_path / "probe-a").unlink()
    (tmp_path / "caf\u00e9").unlink()
    assert download_module.folds_case(str(tmp_path)) is truth
    assert download_module.folds_case(str(tmp_path / "not" / "made")) is truth
    assert list(tmp_path.iterdir()) == []


def test_a_file_already_where_one_is_written_is_not_written_over(tmp_path: Path) -> None:
    # As the second of two names one where case is ignored ("README", then "readme").
    (tmp_path / "README").write_text("first")
    with pytest.raises(DestinationNotEmpty, match="two names differing only in case"):
        download_module.write_file(_file("README"), str(tmp_path / "README"), [b"new"])
    assert (tmp_path / "README").read_text() == "first"


class CallBudgetExceeded(Exception):
    pass


@contextlib.contextmanager
def call_budget(calls: int) -> Iterator[None]:
    """Fail fast, instead of hanging, when the code inside makes more Python calls."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event == "call":
            count += 1
            if count > calls:
                raise CallBudgetExceeded(f"more than {calls} calls")

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)


def test_symlink_chains_are_checked_quickly(
    store: Store, repo: Repository, tmp_path: Path, author: Author
) -> None:
    links = [_link("l0", "d")] + [_link(f"l{k}", f"l{k - 1}/../l{k - 1}") for k in range(1, 30)]
    entries = [Entry("d", Kind.DIR, 0o755, 0, tree=store.trees.put([])), *links]
    bid = _craft(store, repo, entries, author)
    with call_budget(200_000), contextlib.suppress(UnsafePath):
        repo.download(bid, str(tmp_path / "dest"))


def test_download_file_refuses_unsafe_symlink(
    store: Store, repo: Repository, tmp_path: Path, author: Author
) -> None:
    bid = _craft(store, repo, [_link("evil", "/etc/passwd")], author)
    with pytest.raises(UnsafePath):
        repo.download_file(bid, "evil", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "evil").exists()


@pytest.mark.parametrize("name_filter", [None, "."], ids=["all", "filtered"])
def test_chained_symlinks_cannot_escape(
    store: Store, repo: Repository, tmp_path: Path, author: Author, name_filter: str | None
) -> None:
    # Found broken: each link was checked alone, so 'a/e' -> '..' and 'l' -> 'a/e/..'
    # (each harmless) made dest/l point at the destination's parent.
    inner = store.trees.put([_link("e", "..")])
    entries = [Entry("a", Kind.DIR, 0o755, 0, tree=inner), _link("l", "a/e/..")]
    bid = _craft(store, repo, entries, author)
    dest = tmp_path / "outer" / "dest"
    with pytest.raises(UnsafePath):
        repo.download(bid, str(dest), name_filter=name_filter)
    assert not dest.exists()


def test_duplicate_names_cannot_write_through_a_symlink(
    store: Store, repo: Repository, tmp_path: Path, author: Author
) -> None:
    # Found broken: with a name filter, folders are not created up front, so a file of
    # folder 'l' was written through the same-named symlink 'l', outside the destination.
    payload = store.trees.put([Entry("pwned", Kind.FILE, 0o644, 0)])
    inner = store.trees.put([_link("e", "..")])
    entries = [
        _link("l", "a/e/.."),
        Entry("l", Kind.DIR, 0o755, 0, tree=payload),
        Entry("a", Kind.DIR, 0o755, 0, tree=inner),
    ]
    bid = _craft(store, repo, entries, author)
    outer = tmp_path / "outer"
    outer.mkdir()
    for name_filter in [None, ".", "pwned"]:
        with pytest.raises(UnsafePath):
            repo.download(bid, str(outer / "dest"), name_filter=name_filter)
        assert list(outer.iterdir()) == []


def test_duplicate_names_are_refused(
    store: Store, repo: Repository, tmp_path: Path, author: Author
) -> None:
    bid = _craft(store, repo, [_file("twice"), _file("twice")], author)
    with pytest.raises(UnsafePath):
        repo.download(bid, str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()


# sources a bundle could not hold faithfully ---------------------------------------------


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "../sub/../../x"])
def test_upload_refuses_symlinks_leaving_the_tree(
    repo: Repository, tmp_path: Path, author: Author, target: str
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"sub/ok.txt": b"ok"})
    os.symlink(target, src / "sub" / "link")
    with pytest.raises(UnsafePath) as info:
        repo.upload(str(src), _opts(author))
    assert info.value.path == "sub/link"
    assert repo.bundles() == []


def test_upload_refuses_names_that_are_not_utf8(
    repo: Repository, tmp_path: Path, author: Author
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"ok.txt": b"ok"})
    with open(os.path.join(os.fsencode(src), b"bad-\xff.txt"), "wb") as f:
        f.write(b"x")
    with pytest.raises(UnsafePath):
        repo.upload(str(src), _opts(author))
    assert repo.bundles() == []


# less common shapes ---------------------------------------------------------------------


def _store_with(meta: MemoryBackend, **changes: object) -> Store:
    config = StoreConfig(format=FORMAT_VERSION, id=secrets.token_hex(16), created=datetime.now(UTC))
    meta.put(CONFIG, to_json(msgspec.structs.replace(config, **changes)))
    return Store(meta)


def test_many_small_chunks(tmp_path: Path, author: Author) -> None:
    # Tiny chunks: files of hundreds of chunks cross the reader's windows and index batches.
    params = ChunkerParams(min_size=256, avg_size=1024, max_size=4096)
    store = _store_with(MemoryBackend("tiny-chunks"), chunker=params, pack_size=64 * 1024)
    repo = Repository.create(store, "r", "", author)
    write_tree(tmp_path / "src", {"a.bin": random_bytes(1, 900_000), "b.csv": text_bytes(2, 5000)})
    result = repo.upload(str(tmp_path / "src"), _opts(author))
    assert result.chunks > 600
    assert result.packs_written > 10
    repo.download(result.bundle_id, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(tmp_path / "src")
    assert repo.verify(result.bundle_id).ok


def test_a_store_created_with_the_earlier_chunk_sizes_is_cut_with_them(
    tmp_path: Path, author: Author
) -> None:
    earlier = ChunkerParams(min_size=16 * 1024, avg_size=48 * 1024, max_size=256 * 1024)
    store = _store_with(MemoryBackend("earlier"), chunker=earlier)
    data = random_bytes(4, 3_000_000)
    write_tree(tmp_path / "src", {"a.bin": data})
    result = Repository.create(store, "r", "", author).upload(str(tmp_path / "src"), _opts(author))
    sizes = [len(c) for c in FastCDCChunker(earlier).chunks_of(data)]
    assert result.chunks == len(sizes)
    assert sizes != [len(c) for c in FastCDCChunker(ChunkerParams()).chunks_of(data)]
    # A store created now records chunks of about 192 KiB in its config.json.
    meta = MemoryBackend("now")
    Store(meta)
    assert msgspec.json.decode(meta.get(CONFIG))["chunker"] == {
        "algorithm": "fastcdc2020",
        "min_size": 65536,
        "avg_size": 131072,
        "max_size": 1048576,
        "normalization": 1,
        "seed": 0,
    }


def test_split_directories_end_to_end(
    repo: Repository, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trees_module, "SPLIT", 4)
    src = tmp_path / "src"
    write_tree(src, {f"wide/f{i:03d}.txt": b"%d" % i for i in range(30)})
    a = repo.upload(str(src), _opts(author))
    wide = repo.store.trees.lookup(bytes.fromhex(a.bundle.tree), "wide")
    assert len(repo.store.trees.get(wide.tree).parts) == 8
    (src / "wide" / "f017.txt").write_bytes(b"changed")
    (src / "wide" / "f031.txt").write_bytes(b"new")
    b = repo.upload(str(src), _opts(author))
    assert b.trees_written == 4  # one part, its new neighbour part, wide/ and the root
    assert _changes(repo.diff(a.bundle_id, b.bundle_id)) == {
        (MODIFIED, "wide/f017.txt"),
        (ADDED, "wide/f031.txt"),
    }
    work = tmp_path / "work"
    repo.download(a.bundle_id, str(work))
    repo.update(b.bundle_id, str(work))
    assert describe_tree(work) == describe_tree(src)
    assert len(list(repo.files(b.bundle_id))) == 31


def test_separate_blob_location(tmp_path: Path, author: Author) -> None:
    store = Store.open(str(tmp_path / "meta"), blob=str(tmp_path / "blobs"))
    repo = Repository.create(store, "r", "", author)
    mixed_tree(tmp_path / "src", seed=3)
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    assert list((tmp_path / "blobs").glob("packs/*/*"))
    assert not (tmp_path / "meta" / "packs").exists()
    assert not (tmp_path / "blobs" / "bundles").exists()
    again = Repository(Store.open(str(tmp_path / "meta"), blob=str(tmp_path / "blobs")), "r")
    again.download(bid, str(tmp_path / "dest"))
    assert describe_tree(tmp_path / "dest") == describe_tree(tmp_path / "src")


def test_a_blob_location_without_the_bundles_packs_says_so(tmp_path: Path, author: Author) -> None:
    store = Store.open(str(tmp_path / "meta"), blob=str(tmp_path / "blobs"))
    repo = Repository.create(store, "r", "", author)
    mixed_tree(tmp_path / "src", seed=3)
    bid = repo.upload(str(tmp_path / "src"), _opts(author)).bundle_id
    (tmp_path / "other").mkdir()
    wrong = Store.open(
        str(tmp_path / "meta"), blob=str(tmp_path / "other"), cache=tmp_path / "cache2"
    )
    with pytest.raises(PackMissing, match="blob location given may not be this store's") as info:
        Repository(wrong, "r").download(bid, str(tmp_path / "dest"))
    assert info.value.pack in store.bundles.get("r", bid).packs
    assert isinstance(info.value, ObjectNotFound)
    report = Repository(wrong, "r").verify(bid)
    assert any("may not be this store's" in problem for problem in report.problems)


class FailingPacks(MemoryBackend):
    """Stores everything but packs, as a bucket that went read-only mid-upload."""

    def put_if_absent(self, key: str, data: bytes | bytearray) -> bool:
        if key.startswith("packs/"):
            raise StorageError(f"{key}: the disk is full")
        return super().put_if_absent(key, data)


def test_storage_failure_during_upload(tmp_path: Path, author: Author) -> None:
    store = _store_with(FailingPacks("failing"), pack_size=50_000)
    repo = Repository.create(store, "r", "", author)
    write_tree(tmp_path / "src", {f"f{i}.bin": random_bytes(i, 120_000) for i in range(6)})
    with pytest.raises(StorageError, match="disk is full"):
        repo.upload(str(tmp_path / "src"), _opts(author, label="x"))
    assert repo.bundles() == []
    assert repo.branches() == []
    assert repo.labels() == []
    assert store.bundles.ids("r") == []


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, description: str, total: int | None) -> None:
        self.events.append(("start", total))

    def advance(self, amount: int) -> None:
        self.events.append(("advance", amount))

    def finish(self) -> None:
        self.events.append(("finish", None))


def test_progress_is_reported(repo: Repository, src: Path, tmp_path: Path, author: Author) -> None:
    up = Recorder()
    result = repo.upload(str(src), _opts(author), progress=up)
    down = Recorder()
    repo.download(result.bundle_id, str(tmp_path / "dest"), progress=down)
    for rec in (up, down):
        assert rec.events[0] == ("start", result.bundle.size)
        assert rec.events[-1] == ("finish", None)
        advanced = sum(a for kind, a in rec.events if kind == "advance" and isinstance(a, int))
        assert advanced == result.bundle.size


def test_downloads_from_local_disk_use_a_thread_a_core_or_one_more_for_large_files(
    tmp_path: Path,
) -> None:
    cores = max(2, os.cpu_count() or 1)
    local = Store.open(str(tmp_path / "store"))
    assert download_module._workers(local, 64) == min(64, cores)
    assert download_module._workers(local, 1) == 1
    # Large files' packs are read around the page cache: one thread more waits on the disk.
    assert download_module._workers(local, 64, large=True) == min(64, cores + 1)
    assert download_module._workers(local, cores, large=True) == cores
    assert download_module._workers(local, 1, large=True) == 1
    # From an object store (here in memory), the asked concurrency hides request latency.
    remote = Store.open("memory://bench")
    assert download_module._workers(remote, 64) == 64
    assert download_module._workers(remote, 0) == 1


@pytest.mark.parametrize(
    ("sizes", "large"),
    [([9 << 20, 1 << 10], True), ([1 << 10] * 3, False), ([9 << 20] + [1 << 20] * 10, False)],
)
def test_a_download_asks_for_a_thread_more_when_large_files_hold_most_bytes(
    repo: Repository,
    tmp_path: Path,
    author: Author,
    monkeypatch: pytest.MonkeyPatch,
    sizes: list[int],
    large: bool,
) -> None:
    folder = tmp_path / "tree"
    folder.mkdir()
    for i, size in enumerate(sizes):
        (folder / f"f{i}").write_bytes(random_bytes(i, size))
    bid = repo.upload(str(folder), _opts(author)).bundle_id
    asked: list[bool] = []
    workers = download_module._workers

    def recorded(store: Store, concurrency: int, large: bool = False) -> int:
        asked.append(large)
        return workers(store, concurrency, large)

    monkeypatch.setattr(download_module, "_workers", recorded)
    repo.download(bid, str(tmp_path / "dest"))
    assert asked == [large]
    assert describe_tree(tmp_path / "dest") == describe_tree(folder)


def _segmented(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Segments of 64 KiB (about one chunk); returns the offsets of the segments written."""
    monkeypatch.setattr(download_module, "SEGMENT_BYTES", 64 << 10)
    monkeypatch.setattr(download_module, "GROUP_BYTES", 64 << 10)
    offsets: list[int] = []
    real = download_module._Segment.write

    def write(self: download_module._Segment, store: Store) -> int:
        offsets.append(self.offset)
        return real(self, store)

    monkeypatch.setattr(download_module._Segment, "write", write)
    return offsets


def test_large_files_are_written_in_segments_at_their_offsets(
    local_store: Store, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    write_tree(src, {"big.bin": random_bytes(7, 3_000_000), "small.txt": b"hello\n"})
    os.chmod(src / "big.bin", 0o640)
    os.utime(src / "big.bin", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    bid = repo.upload(str(src), _opts(author)).bundle_id
    offsets = _segmented(monkeypatch)
    dest = tmp_path / "dest"
    repo.download(bid, str(dest), concurrency=4)
    assert (dest / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert (dest / "small.txt").read_bytes() == b"hello\n"
    st = (dest / "big.bin").stat()
    assert st.st_mode & 0o777 == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    # Written in many pieces, each where it belongs (not one after the other).
    assert len(offsets) > 10
    assert sorted(offsets) == sorted(set(offsets))
    assert 0 in offsets
    assert max(offsets) < 3_000_000


def test_a_failed_segment_leaves_no_large_file(
    damaged_setup: tuple[Repository, str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, bid, src = damaged_setup
    chunk = _flip_in_chunk_of(repo.store, repo, bid, "f2.bin")
    offsets = _segmented(monkeypatch)
    dest = tmp_path / "dest"
    with pytest.raises((ChecksumMismatch, CorruptObject)) as info:
        repo.download(bid, str(dest), concurrency=2)
    assert chunk in str(info.value)
    assert offsets  # the files were written in segments
    assert not (dest / "f2.bin").exists()
    # Files whose every segment was written are whole; nothing is left open or partial.
    for written in dest.iterdir():
        assert written.read_bytes() == (src / written.name).read_bytes()


def test_a_segment_whose_chunk_is_not_the_size_its_tree_says_fails(
    local_store: Store, tmp_path: Path, author: Author, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.create(local_store, "r", "", author)
    src = tmp_path / "src"
    write_tree(src, {"big.bin": random_bytes(3, 1_000_000)})
    bid = repo.upload(str(src), _opts(author)).bundle_id
    _segmented(monkeypatch)
    real_read = repo.store.reader.stream

    def short_first(refs: Sequence[ChunkRef]) -> Iterator[bytes | memoryview]:
        for i, data in enumerate(real_read(refs)):
            yield data[:-1] if i == 0 else data

    monkeypatch.setattr(repo.store.reader, "stream", short_first)
    with pytest.raises(CorruptObject, match="bytes, not"):
        repo.download(bid, str(tmp_path / "dest"), concurrency=2)
    assert not (tmp_path / "dest" / "big.bin").exists()


def test_an_empty_label_is_refused_not_ignored(repo: Repository, src: Path, author: Author) -> None:
    with pytest.raises(InvalidName):
        repo.upload(str(src), _opts(author, label=""))
    assert repo.bundles() == []


@pytest.mark.parametrize(
    ("message", "who"),
    [
        (123, ("A", "a@example.com")),
        (None, ("A", "a@example.com")),
        ("m", (None, None)),
        ("bad \udcff", ("A", "a@example.com")),
    ],
    ids=["int-message", "no-message", "no-author", "surrogate"],
)
def test_a_message_or_author_a_bundle_cannot_hold_is_refused_first(
    repo: Repository, src: Path, message: object, who: tuple[object, object]
) -> None:
    author = Author(*who)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"must be text|not valid Unicode"):
        repo.upload(str(src), UploadOptions(message, author))  # type: ignore[arg-type]
    assert repo.bundles() == []

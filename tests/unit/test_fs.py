"""The ``datamon://`` fsspec filesystem and the notebook helpers, over memory stores."""

from __future__ import annotations

import errno
import importlib.metadata
import os
import pickle
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import datamon
from datamon import Author, Repository, Store, UploadOptions
from datamon.cafs.layout import pack_key
from datamon.config import CONFIG_ENV
from datamon.core.model import Entry, Kind
from datamon.errors import (
    AccessDenied,
    AmbiguousId,
    BundleNotFound,
    ChecksumMismatch,
    DatamonError,
    InvalidName,
    ObjectNotFound,
    RefConflict,
    RepoExists,
    StoreUnreachable,
)
from datamon.fs import DatamonFileSystem
from datamon.fs.changes import ChangeSet
from datamon.fs.oserrors import to_oserror
from datamon.fs.url import BundlePath, parse
from datamon.fs.view import BundleView, TreeCache
from datamon.storage.memory import MemoryBackend
from datamon.testing.workloads import BASE_MTIME_NS, random_bytes, write_file

BIG = random_bytes(7, 4_000_000)


@pytest.fixture(autouse=True)
def fresh_instances() -> Iterator[None]:
    """fsspec caches instances by their options; a test must not see another test's."""
    DatamonFileSystem.clear_instance_cache()
    yield
    DatamonFileSystem.clear_instance_cache()


@pytest.fixture
def location() -> str:
    return f"memory://fs-{secrets.token_hex(6)}"


@pytest.fixture
def store(location: str) -> Store:
    return Store.open(location)


@pytest.fixture
def repo(store: Store, author: Author, tmp_path: Path) -> Repository:
    """A repo whose ``main`` head (labelled ``v1``) has files, folders and symlinks."""
    src = tmp_path / "src"
    write_file(src / "x.csv", b"a,b\n1,2\n3,4\n")
    write_file(src / "sub" / "big.bin", BIG, mode=0o600)
    write_file(src / "sub" / "deep" / "note.txt", b"deep")
    (src / "empty").mkdir()
    os.symlink("sub", src / "link")
    os.symlink("x.csv", src / "flink")
    os.symlink("nowhere", src / "dangling")
    repository = Repository.create(store, "repo", "fs tests", author)
    repository.upload(str(src), UploadOptions("first", author, label="v1"))
    return repository


@pytest.fixture
def fs(location: str, repo: Repository, author: Author) -> DatamonFileSystem:
    return DatamonFileSystem(store=location, author=author, skip_instance_cache=True)


def head(repository: Repository, branch: str = "main") -> str:
    return repository.branch(branch).bundle


def cached_chunks(fs: DatamonFileSystem) -> int:
    assert fs.chunks.cache is not None
    fs.chunks.cache.flush()
    return fs.chunks.cache.count()


# URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("datamon://repo@v1/a/b.csv", BundlePath("repo", "v1", "a/b.csv")),
        ("datamon://repo/a/", BundlePath("repo", None, "a")),
        ("repo@0a1b2c", BundlePath("repo", "0a1b2c", "")),
        ("datamon://", BundlePath("", None, "")),
        ("datamon::repo/./x", BundlePath("repo", None, "x")),
    ],
)
def test_parse(url: str, expected: BundlePath) -> None:
    assert parse(url) == expected


@pytest.mark.parametrize("url", ["datamon://repo@/x", "datamon://@v1/x", "repo/../x"])
def test_parse_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse(url)


def test_entry_point_registers_the_protocol() -> None:
    points = importlib.metadata.entry_points(group="fsspec.specs")
    assert [p.value for p in points if p.name == "datamon"] == ["datamon.fs:DatamonFileSystem"]
    assert fsspec.get_filesystem_class("datamon") is DatamonFileSystem


# reads --------------------------------------------------------------------------------------


def test_ls_root_lists_repos(fs: DatamonFileSystem) -> None:
    assert fs.ls("datamon://", detail=False) == ["repo"]
    assert fs.info("") == {"name": "", "size": 0, "type": "directory"}


def test_ls_and_info(fs: DatamonFileSystem, repo: Repository) -> None:
    names = fs.ls("datamon://repo@v1", detail=False)
    assert names == [
        "repo@v1/dangling",
        "repo@v1/empty",
        "repo@v1/flink",
        "repo@v1/link",
        "repo@v1/sub",
        "repo@v1/x.csv",
    ]
    by_name = {d["name"]: d for d in fs.ls("repo@v1/")}
    assert by_name["repo@v1/x.csv"]["type"] == "file"
    assert by_name["repo@v1/x.csv"]["size"] == 12
    assert by_name["repo@v1/empty"]["type"] == "directory"
    assert by_name["repo@v1/link"]["type"] == "directory"
    assert by_name["repo@v1/link"]["islink"] is True
    assert by_name["repo@v1/link"]["destination"] == "sub"
    assert by_name["repo@v1/dangling"]["type"] == "other"
    info = fs.info("datamon://repo@v1/sub/big.bin")
    assert info["name"] == "repo@v1/sub/big.bin"
    assert (info["type"], info["size"]) == ("file", len(BIG))
    assert info["mode"] == 0o100600
    assert info["mtime"] == BASE_MTIME_NS / 1e9
    assert info["bundle"] == head(repo)
    assert fs.info("repo@v1/flink")["size"] == 12
    assert fs.ls("repo@v1/x.csv", detail=False) == ["repo@v1/x.csv"]
    assert fs.ls("repo@v1/empty") == []
    assert fs.modified("repo/x.csv").timestamp() == pytest.approx(BASE_MTIME_NS / 1e9)


def test_find_glob_walk(fs: DatamonFileSystem) -> None:
    assert fs.find("repo@v1/sub") == ["repo@v1/sub/big.bin", "repo@v1/sub/deep/note.txt"]
    assert fs.glob("datamon://repo/**/*.txt") == [
        "repo/link/deep/note.txt",
        "repo/sub/deep/note.txt",
    ]
    assert fs.glob("repo@v1/*.csv") == ["repo@v1/x.csv"]
    assert fs.du("repo@v1/sub") == len(BIG) + 4
    assert fs.isdir("repo@v1/link") and fs.isfile("repo@v1/flink")
    assert not fs.exists("repo@v1/nope")


def test_cat_and_open(fs: DatamonFileSystem) -> None:
    assert fs.cat("datamon://repo@v1/x.csv") == b"a,b\n1,2\n3,4\n"
    assert fs.cat("repo@v1/flink") == b"a,b\n1,2\n3,4\n"
    assert fs.cat("repo@v1/link/big.bin") == BIG
    with fs.open("repo@v1/sub/big.bin", "rb", block_size=4096) as f:
        f.seek(1_000_000)
        assert f.read(100) == BIG[1_000_000:1_000_100]
        f.seek(-10, 2)
        assert f.read() == BIG[-10:]
    with fs.open("repo@v1/x.csv", "r") as text:
        assert text.readlines() == ["a,b\n", "1,2\n", "3,4\n"]
    assert fs.head("repo@v1/x.csv", 3) == b"a,b"
    assert fs.cat_ranges(["repo@v1/x.csv"] * 2, [0, 4], [3, 7]) == [b"a,b", b"1,2"]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),
        (0, 1),
        (65_000, 70_000),
        (1_000_000, None),
        (-5000, None),
        (10, -10),
        (len(BIG) - 1, len(BIG) + 100),
        (len(BIG) + 5, None),
        (500, 400),
    ],
)
def test_cat_file_ranges(fs: DatamonFileSystem, start: int | None, end: int | None) -> None:
    assert fs.cat_file("repo@v1/sub/big.bin", start, end) == BIG[start:end]


def test_range_reads_fetch_only_the_chunks_covering_them(
    fs: DatamonFileSystem, store: Store
) -> None:
    bundle = fs.view("repo").bundle
    assert bundle is not None
    entry = store.trees.lookup(bytes.fromhex(bundle.tree), "sub/big.bin")
    sizes = [c.size for c in entry.chunks]
    assert len(sizes) > 10
    start = sizes[0] + sizes[1] + 5  # inside the third chunk ...
    end = start + sizes[2] + sizes[3]  # ... to inside the fifth
    assert fs.cat_file("repo/sub/big.bin", start, end) == BIG[start:end]
    assert cached_chunks(fs) == 3
    assert fs.chunks.cache is not None
    misses = fs.chunks.cache.misses
    assert fs.cat_file("repo/sub/big.bin", start, end) == BIG[start:end]
    assert fs.chunks.cache.misses == misses
    assert fs.chunks.cache.hits >= 3


def test_files_are_read_without_a_cache(location: str, repo: Repository) -> None:
    fs = DatamonFileSystem(store=location, cache_size=0, skip_instance_cache=True)
    assert fs.chunks.cache is None
    assert fs.cat("repo/sub/big.bin") == BIG


def test_dangling_links(fs: DatamonFileSystem) -> None:
    with pytest.raises(FileNotFoundError):
        fs.cat("repo@v1/dangling")
    assert fs.info("repo@v1/dangling")["type"] == "other"


def test_symlink_loops_stop(fs: DatamonFileSystem, store: Store) -> None:
    # Uploads refuse loops; a tree written by other means must still not hang a reader.
    links = [Entry("a", Kind.SYMLINK, 0o777, 0, target="b/x")]
    links.append(Entry("b", Kind.SYMLINK, 0o777, 0, target="a"))
    view = BundleView(store, "repo", None, TreeCache(store.trees), fs.chunks)
    view.root = Entry("", Kind.DIR, 0o755, 0, tree=store.trees.put(links))
    with pytest.raises(OSError) as raised:
        view.lookup("a")
    assert raised.value.errno == errno.ELOOP
    assert [target for _entry, target in view.listdir("")] == [None, None]


@pytest.mark.parametrize(
    "path",
    [
        "repo@v1/nope.csv",
        "repo@v1/x.csv/below",
        "repo@nope/x.csv",
        "repo@ffffff/x.csv",
        "other/x.csv",
        "other",
    ],
)
def test_missing_paths_raise_file_not_found(fs: DatamonFileSystem, path: str) -> None:
    with pytest.raises(FileNotFoundError):
        fs.info(path)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(path)
    with pytest.raises(FileNotFoundError):
        fs.ls(path)


def test_a_folder_is_not_a_file(fs: DatamonFileSystem) -> None:
    with pytest.raises(IsADirectoryError):
        fs.cat_file("repo@v1/sub")
    with pytest.raises(IsADirectoryError):
        fs.open("repo@v1")


def test_refs_name_labels_branches_and_bundle_ids(
    fs: DatamonFileSystem, repo: Repository, author: Author
) -> None:
    bid = head(repo)
    repo.create_branch("dev", bid, author)
    for ref in ("v1", "main", "dev", bid, bid[:8]):
        assert fs.cat(f"repo@{ref}/x.csv") == b"a,b\n1,2\n3,4\n"
        assert fs.info(f"repo@{ref}")["bundle"] == bid
    with pytest.raises(FileNotFoundError, match="no label, branch or bundle id"):
        fs.info("repo@nothing")


def test_a_ref_is_pinned_until_the_cache_is_invalidated(
    fs: DatamonFileSystem, repo: Repository, author: Author, tmp_path: Path
) -> None:
    first = head(repo)
    assert fs.info("repo/x.csv")["bundle"] == first
    assert fs.info("repo@main/x.csv")["bundle"] == first
    write_file(tmp_path / "next" / "x.csv", b"changed")
    repo.upload(str(tmp_path / "next"), UploadOptions("second", author))
    assert fs.cat("repo/x.csv") == b"a,b\n1,2\n3,4\n"
    assert fs.info("repo@main/x.csv")["bundle"] == first
    # Another instance on the same store shares the pin: a Dask task sees what its client saw.
    other = DatamonFileSystem(store=fs.storage_options["store"], skip_instance_cache=True)
    assert other.cat("repo/x.csv") == b"a,b\n1,2\n3,4\n"
    fs.invalidate_cache("repo")
    assert fs.cat("repo/x.csv") == b"changed"
    assert fs.cat("repo@main/x.csv") == b"a,b\n1,2\n3,4\n"
    fs.invalidate_cache()
    assert fs.cat("repo@main/x.csv") == b"changed"


def test_an_open_file_keeps_its_bundle(fs: DatamonFileSystem) -> None:
    with fs.open("repo/x.csv") as f:
        fs.pipe_file("repo/x.csv", b"new content")
        assert f.read() == b"a,b\n1,2\n3,4\n"
    assert fs.cat("repo/x.csv") == b"new content"


def test_a_repo_without_bundles_is_empty(
    fs: DatamonFileSystem, store: Store, author: Author
) -> None:
    Repository.create(store, "fresh", "nothing yet", author)
    assert fs.ls("fresh") == []
    assert fs.info("fresh")["type"] == "directory"
    with pytest.raises(FileNotFoundError):
        fs.ls("fresh@main")


def test_a_missing_store_is_file_not_found(tmp_path: Path) -> None:
    fs = DatamonFileSystem(store=str(tmp_path / "none"), skip_instance_cache=True)
    with pytest.raises(FileNotFoundError, match="no Datamon store"):
        fs.ls("")


def test_the_store_comes_from_the_config(
    location: str, repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "datamon.yaml"
    config.write_text(f"name: Ada\nemail: ada@example.com\nstore: {location}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    fs = DatamonFileSystem(skip_instance_cache=True)
    assert fs.cat("repo@v1/x.csv") == b"a,b\n1,2\n3,4\n"
    fs.pipe_file("repo/by-config.txt", b"x")
    assert repo.bundle(head(repo)).author == Author("Ada", "ada@example.com")
    with fsspec.open("datamon://repo@v1/x.csv", "rb") as f:
        assert f.read(3) == b"a,b"


def test_a_damaged_pack_is_an_io_error(fs: DatamonFileSystem, location: str) -> None:
    backend = MemoryBackend.named(location.removeprefix("memory://"))
    bundle = fs.view("repo").bundle
    assert bundle is not None
    for pack in bundle.packs:
        data = bytearray(backend.get(pack_key(pack)))
        data[-100] ^= 0xFF
        backend.put(pack_key(pack), data)
    with pytest.raises(OSError) as raised:
        fs.cat("repo/sub/big.bin")
    assert raised.value.errno == errno.EIO
    assert isinstance(raised.value.__cause__, DatamonError)


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (BundleNotFound("b"), FileNotFoundError, errno.ENOENT),
        (AccessDenied("no"), PermissionError, errno.EACCES),
        (StoreUnreachable("down"), OSError, errno.EHOSTUNREACH),
        (RepoExists("r"), FileExistsError, errno.EEXIST),
        (RefConflict("main", "a", "b"), OSError, errno.EBUSY),
        (AmbiguousId("ab", ["ab1", "ab2"]), OSError, errno.EINVAL),
        (InvalidName("branch", "a b", "spaces"), OSError, errno.EINVAL),
        (ObjectNotFound("trees/ab"), OSError, errno.EIO),
        (ChecksumMismatch("k", "a", "b"), OSError, errno.EIO),
        (DatamonError("other"), OSError, errno.EIO),
    ],
)
def test_datamon_errors_become_builtin_oserrors(
    error: DatamonError, kind: type[OSError], code: int
) -> None:
    translated = to_oserror(error, "repo/x")
    assert type(translated) is kind
    assert (translated.errno, translated.filename) == (code, "repo/x")
    assert str(error) in str(translated)


def test_pickled_filesystem_reads_the_same(fs: DatamonFileSystem) -> None:
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat("repo@v1/x.csv") == b"a,b\n1,2\n3,4\n"


# writes -------------------------------------------------------------------------------------


def test_writing_a_file_commits_one_bundle_on_the_head(
    fs: DatamonFileSystem, repo: Repository, store: Store
) -> None:
    before = head(repo)
    old = store.trees.lookup(bytes.fromhex(repo.bundle(before).tree), "sub")
    with fs.open("datamon://repo/new/data.csv", "wb") as f:
        f.write(b"c,d\n")
    after = head(repo)
    bundle = repo.bundle(after)
    assert bundle.parents == (before,)
    assert bundle.files == repo.bundle(before).files + 1
    assert bundle.message == "1 path(s) changed through datamon://: new/data.csv"
    # Untouched folders keep their trees: nothing below them was rewritten.
    assert store.trees.lookup(bytes.fromhex(bundle.tree), "sub").tree == old.tree
    assert fs.cat("repo/new/data.csv") == b"c,d\n"
    assert fs.cat("repo/sub/big.bin") == BIG
    assert repo.verify(after).ok


def test_overwriting_keeps_the_mode(fs: DatamonFileSystem) -> None:
    fs.pipe_file("repo/sub/big.bin", b"small")
    info = fs.info("repo/sub/big.bin")
    assert (info["size"], info["mode"]) == (5, 0o100600)
    fs.pipe_file("repo/brand-new", b"new")
    assert fs.info("repo/brand-new")["mode"] == 0o100644


def test_a_transaction_commits_one_bundle(fs: DatamonFileSystem, repo: Repository) -> None:
    before = len(repo.bundles())
    with fs.transaction as transaction:
        transaction.message = "batch"
        with fs.open("repo/a.txt", "wb") as f:
            f.write(b"a")
        fs.pipe("repo/b.txt", b"b")
        fs.rm("repo/x.csv")
        fs.mkdir("repo/made")
        assert not fs.exists("repo/a.txt")  # staged writes are invisible until the commit
    assert len(repo.bundles()) == before + 1
    assert repo.bundle(head(repo)).message == "batch"
    assert transaction.results["repo@main"].bundle_id == head(repo)
    assert fs.cat("repo/a.txt") == b"a" and fs.cat("repo/b.txt") == b"b"
    assert not fs.exists("repo/x.csv")
    assert fs.isdir("repo/made")


def test_a_failed_transaction_commits_nothing(fs: DatamonFileSystem, repo: Repository) -> None:
    before = head(repo)
    staging = fs.transaction
    with pytest.raises(RuntimeError), fs.transaction:
        fs.pipe("repo/a.txt", b"a")
        f = fs.open("repo/b.txt", "wb")
        f.write(b"unfinished")
        raise RuntimeError("boom")
    assert head(repo) == before
    assert not fs._intrans
    assert not staging.changes
    fs.pipe("repo/c.txt", b"c")  # the filesystem writes normally again
    assert not fs.exists("repo/a.txt") and fs.cat("repo/c.txt") == b"c"


def test_a_transaction_over_two_branches_commits_one_bundle_each(
    fs: DatamonFileSystem, repo: Repository, author: Author
) -> None:
    repo.create_branch("dev", head(repo), author)
    with fs.transaction as transaction:
        fs.pipe("repo@main/m.txt", b"m")
        fs.pipe("repo@dev/d.txt", b"d")
    assert set(transaction.results) == {"repo@main", "repo@dev"}
    assert fs.exists("repo@main/m.txt") and not fs.exists("repo@main/d.txt")
    assert fs.exists("repo@dev/d.txt")


def test_exclusive_creation(fs: DatamonFileSystem) -> None:
    with pytest.raises(FileExistsError):
        fs.open("repo/x.csv", "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file("repo/x.csv", b"x", mode="create")
    fs.pipe_file("repo/y.csv", b"y", mode="create")
    with fs.transaction:
        fs.pipe_file("repo/z.csv", b"z", mode="create")
    assert fs.cat("repo/z.csv") == b"z"


def test_append(fs: DatamonFileSystem) -> None:
    with fs.open("repo/x.csv", "ab") as f:
        assert f.tell() == 12
        f.write(b"5,6\n")
    assert fs.cat("repo/x.csv") == b"a,b\n1,2\n3,4\n5,6\n"


def test_appends_of_two_writers_are_both_kept(
    fs: DatamonFileSystem, location: str, author: Author
) -> None:
    """A writer that read the file before another appended does not take that append back."""
    assert fs.cat("repo/x.csv") == b"a,b\n1,2\n3,4\n"  # this filesystem's view is pinned now
    # Another process appends (its commit moves the branch; this one's view stays pinned).
    changes = ChangeSet("repo", "main")
    local = changes.new_file()
    Path(local).write_bytes(b"a,b\n1,2\n3,4\nfrom the other\n")
    changes.write("x.csv", local)
    changes.commit(fs.store, author, "the other's append")
    changes.discard()
    with fs.open("repo/x.csv", "ab") as f:
        assert f.tell() == 12  # the end of the file as this filesystem sees it
        f.write(b"from this one\n")
    other = DatamonFileSystem(store=location, author=author, skip_instance_cache=True)
    assert other.cat("repo@main/x.csv") == b"a,b\n1,2\n3,4\nfrom the other\nfrom this one\n"


def test_a_write_without_autocommit_commits_when_told(
    fs: DatamonFileSystem, repo: Repository
) -> None:
    before = len(repo.bundles())
    f = fs.open("repo/kept.txt", "wb", autocommit=False)
    f.write(b"kept")
    f.close()
    assert not fs.exists("repo@main/kept.txt") and len(repo.bundles()) == before
    f.commit()
    assert fs.cat("repo@main/kept.txt") == b"kept" and len(repo.bundles()) == before + 1
    g = fs.open("repo/dropped.txt", "wb", autocommit=False)
    g.write(b"dropped")
    g.close()
    g.discard()
    with fs.transaction:  # a later transaction does not pick it up
        fs.pipe("repo/other.txt", b"o")
    assert not fs.exists("repo@main/dropped.txt")


def test_sdk_blocks_nest_and_datamon_open_commits_on_its_own(
    location: str, repo: Repository, author: Author
) -> None:
    url = "datamon://repo@main"
    opts = {"store": location, "author": author}
    with pytest.raises(RuntimeError), datamon.fs.commit(url, **opts) as outer:
        with datamon.fs.commit(url, **opts) as inner:
            inner.write_bytes("inner.txt", b"i")
        assert inner.bundle_id is None  # it joined the outer block
        outer.write_bytes("outer.txt", b"o")
        raise RuntimeError("the outer block fails")
    fs = DatamonFileSystem(**opts)
    assert not fs.exists("repo@main/inner.txt") and not fs.exists("repo@main/outer.txt")
    with pytest.raises(RuntimeError), fs.transaction:
        with datamon.open(f"{url}/opened.txt", "wb", **opts) as f:
            f.write(b"committed on close")
        raise RuntimeError("the caller's transaction fails")
    assert DatamonFileSystem(skip_instance_cache=True, **opts).exists("repo@main/opened.txt")


def test_an_inner_block_that_raises_makes_the_outer_commit_nothing(
    location: str, repo: Repository, author: Author
) -> None:
    from datamon.errors import CommitAborted

    opts = {"store": location, "author": author}
    before = len(repo.bundles())
    with pytest.raises(CommitAborted), datamon.fs.commit("datamon://repo@main", **opts) as out:
        out.write_bytes("outer.txt", b"o")
        with pytest.raises(RuntimeError), datamon.fs.commit("datamon://repo@main", **opts) as inner:
            inner.write_bytes("partial.txt", b"p")
            raise RuntimeError("the inner block fails, and the outer one catches it")
    assert len(repo.bundles()) == before


def test_a_dropped_writer_without_autocommit_is_let_go_of(
    location: str, repo: Repository, author: Author
) -> None:
    import gc
    import weakref

    fs = DatamonFileSystem(store=location, author=author, skip_instance_cache=True)
    f = fs.open("repo/dropped.txt", "wb", autocommit=False)
    f.write(b"x")
    folder = f.changes.folder
    gone = weakref.ref(f)
    del f
    gc.collect()
    assert gone() is None
    assert not os.path.exists(folder)


def test_writes_to_a_block_s_urls_join_the_block(
    location: str, repo: Repository, author: Author
) -> None:
    opts = {"store": location, "author": author}
    before = len(repo.bundles())
    with pytest.raises(RuntimeError), datamon.fs.commit("datamon://repo@main/out", **opts) as out:
        with fsspec.open(out.url("a.csv"), "wb", **opts) as f:
            f.write(b"a,b\n")
        raise RuntimeError("the block fails")
    assert len(repo.bundles()) == before
    with datamon.fs.commit("datamon://repo@main/out", message="both", **opts) as out:
        with fsspec.open(out.url("a.csv"), "wb", **opts) as f:
            f.write(b"a,b\n")
        out.write_bytes("b.txt", b"b")
    assert len(repo.bundles()) == before + 1
    assert out.bundle_id is not None


def test_an_abandoned_text_writer_commits_nothing(
    location: str, repo: Repository, author: Author
) -> None:
    import gc

    before = len(repo.bundles())

    def fails() -> None:
        f = datamon.open("datamon://repo@main/partial.txt", "w", store=location, author=author)
        f.write("partial")
        raise RuntimeError("the task fails before closing")

    with pytest.raises(RuntimeError):
        fails()
    gc.collect()
    assert len(repo.bundles()) == before


def test_rm_mkdir_rmdir(fs: DatamonFileSystem, repo: Repository) -> None:
    before = len(repo.bundles())
    fs.rm("repo/sub", recursive=True)
    assert len(repo.bundles()) == before + 1  # one bundle for the whole removal
    assert not fs.exists("repo/sub")
    with pytest.raises(IsADirectoryError):
        fs.rm("repo/empty")
    with pytest.raises(FileNotFoundError):
        fs.rm("repo/nope")
    fs.rmdir("repo/empty")
    assert not fs.exists("repo/empty")
    fs.makedirs("repo/a/b")
    fs.makedirs("repo/a/b", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs("repo/a/b")
    with pytest.raises(FileExistsError):
        fs.mkdir("repo/x.csv")
    with pytest.raises(FileNotFoundError):
        fs.mkdir("repo/c/d", create_parents=False)
    with pytest.raises(OSError) as raised:
        fs.rmdir("repo/a")
    assert raised.value.errno == errno.ENOTEMPTY
    assert fs.ls("repo/a/b") == []


def test_copy_and_move_reference_chunks(fs: DatamonFileSystem, repo: Repository) -> None:
    with fs.transaction as transaction:
        fs.cp("repo/sub", "repo/copy", recursive=True)
        fs.mv("repo/x.csv", "repo/moved.csv")
    result = transaction.results["repo@main"]
    assert result.new_chunks == 0 and result.bytes_stored == 0
    assert fs.cat("repo/copy/big.bin") == BIG
    assert fs.cat("repo/copy/deep/note.txt") == b"deep"
    assert fs.cat("repo/moved.csv") == b"a,b\n1,2\n3,4\n"
    assert not fs.exists("repo/x.csv")
    # A copy from another repo of the store also costs no data.
    other = Repository.create(repo.store, "other", "", result.bundle.author)
    fs.cp("repo@v1/sub/big.bin", "other/big.bin")
    assert fs.cat("other/big.bin") == BIG
    assert other.verify(head(other)).ok


def test_writes_to_labels_and_bundle_ids_are_refused(
    fs: DatamonFileSystem, repo: Repository
) -> None:
    for ref in ("v1", head(repo), head(repo)[:6]):
        with pytest.raises(OSError) as raised:
            fs.pipe_file(f"repo@{ref}/x.csv", b"x")
        assert raised.value.errno == errno.EROFS
    with pytest.raises(PermissionError):
        fs.pipe_file("datamon://", b"x")
    with pytest.raises(IsADirectoryError):
        fs.pipe_file("datamon://repo@main", b"x")
    with pytest.raises(FileNotFoundError):
        fs.pipe_file("missing/x.csv", b"x")
    with pytest.raises(OSError) as bad:
        fs.pipe_file("repo/bad\x00name", b"x")
    assert bad.value.errno == errno.EINVAL


def test_a_new_branch_starts_empty(fs: DatamonFileSystem, repo: Repository) -> None:
    fs.pipe_file("repo@feature/only.txt", b"1")
    assert fs.ls("repo@feature", detail=False) == ["repo@feature/only.txt"]
    assert repo.bundle(head(repo, "feature")).parents == ()


def test_a_moved_branch_gets_the_changes_replayed_on_its_new_head(
    fs: DatamonFileSystem, location: str, repo: Repository, author: Author
) -> None:
    other = DatamonFileSystem(store=location, author=author, skip_instance_cache=True)
    with fs.transaction:
        fs.pipe("repo/mine.txt", b"mine")
        other.pipe_file("repo/theirs.txt", b"theirs")  # lands first
    theirs = repo.bundle(head(repo)).parents[0]
    assert fs.cat("repo/mine.txt") == b"mine"
    fs.invalidate_cache()
    assert fs.cat("repo/theirs.txt") == b"theirs"
    assert repo.bundle(theirs).message.endswith("theirs.txt")


def test_an_exception_in_a_with_block_discards_the_file(
    fs: DatamonFileSystem, repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    before = head(repo)
    with pytest.raises(RuntimeError), fs.open("repo/a.bin", "wb") as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    store = fs.storage_options["store"]
    with pytest.raises(RuntimeError), datamon.open("datamon://repo/b.csv", "w", store=store) as t:
        t.write("partial")
        raise RuntimeError("boom")
    assert head(repo) == before
    assert list(staging.iterdir()) == []


def test_writes_need_an_author(
    location: str, repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "no-config.yaml"))
    fs = DatamonFileSystem(store=location, skip_instance_cache=True)
    with pytest.raises(OSError, match="no author configured"):
        fs.pipe_file("repo/x.csv", b"x")
    assert fs.cat("repo/x.csv") == b"a,b\n1,2\n3,4\n"


def test_a_failed_commit_leaves_no_staging_behind(
    location: str, repo: Repository, author: Author, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    fs = DatamonFileSystem(
        store=location, author=author, staging=str(staging), skip_instance_cache=True
    )
    with pytest.raises(NotADirectoryError), fs.transaction:
        fs.pipe_file("repo/x.csv/inside", b"x")
    with pytest.raises(NotADirectoryError):
        fs.pipe_file("repo/x.csv/inside", b"x")
    fs.pipe_file("repo/ok.txt", b"ok")
    assert list(staging.iterdir()) == []


# notebook helpers ---------------------------------------------------------------------------


def test_datamon_open(location: str, repo: Repository, author: Author) -> None:
    with datamon.open("datamon://repo@main/t.csv", "w", store=location, author=author) as f:
        f.write("x,y\n1,2\n")
    with datamon.open("datamon://repo/t.csv", "r", store=location) as f:
        assert f.read() == "x,y\n1,2\n"
    with datamon.open("datamon://repo@v1/x.csv", store=location) as b:
        assert b.read() == b"a,b\n1,2\n3,4\n"
    assert repo.bundle(head(repo)).author == author


def test_commit_context(location: str, repo: Repository, author: Author, tmp_path: Path) -> None:
    write_file(tmp_path / "local" / "p.txt", b"p")
    write_file(tmp_path / "local" / "q" / "r.txt", b"r")
    with datamon.fs.commit(
        "datamon://repo@main/out", message="outputs", label="v2", store=location, author=author
    ) as out:
        out.write_bytes("a.bin", b"a")
        with out.open("b.csv", "w") as f:
            f.write("b")
        out.put(str(tmp_path / "local"), "local")
        out.copy("datamon://repo@v1/sub/deep", "deep")
        out.rm("a.bin")
        assert out.url("c.txt") == "datamon://repo@main/out/c.txt"
    assert out.bundle_id == head(repo) == repo.label("v2").bundle
    assert repo.bundle(head(repo)).message == "outputs"
    fs = DatamonFileSystem(store=location, skip_instance_cache=True)
    assert fs.find("repo@v2/out") == [
        "repo@v2/out/b.csv",
        "repo@v2/out/deep/note.txt",
        "repo@v2/out/local/p.txt",
        "repo@v2/out/local/q/r.txt",
    ]
    assert fs.exists("repo@v2/x.csv")  # files outside the block's folder are kept
    with pytest.raises(ValueError), datamon.fs.commit("datamon://repo", store=location) as out:
        out.write_bytes("never.txt", b"x")
        raise ValueError("boom")
    assert out.bundle_id is None
    assert not fs.exists("repo@main/never.txt")


def test_notebook_repository(
    location: str, repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "datamon.yaml"
    config.write_text(f"name: Ada\nemail: ada@example.com\nstore: {location}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    notebook = datamon.repo("repo")
    assert isinstance(notebook, Repository)
    assert [(i.path, i.kind) for i in notebook.ls("sub")] == [
        ("sub/big.bin", Kind.FILE),
        ("sub/deep", Kind.DIR),
    ]
    listed = {i.path: i for i in notebook.ls(ref="v1")}
    assert listed["link"].target == "sub"
    assert listed["x.csv"].hash == next(f.hash for f in repo.files(head(repo)) if f.path == "x.csv")
    with notebook.open("x.csv", ref="v1") as f:
        assert f.read() == b"a,b\n1,2\n3,4\n"
    with notebook.open("w.txt", mode="w") as text:
        text.write("written")
    assert notebook.open("w.txt").read() == b"written"
    assert notebook.url("a/b", ref="v1") == "datamon://repo@v1/a/b"
    with pytest.raises(FileNotFoundError):
        notebook.ls("nope")
    assert [label.name for label in notebook.labels()] == ["v1"]


def test_reading_a_location_with_no_store_makes_nothing(tmp_path: Path) -> None:
    where = tmp_path / "no" / "store"
    fs = DatamonFileSystem(store=str(where), skip_instance_cache=True)
    with pytest.raises(FileNotFoundError, match="no Datamon store"):
        fs.ls("")
    assert not (tmp_path / "no").exists()

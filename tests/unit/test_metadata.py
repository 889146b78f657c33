"""Metadata: Merkle trees, bundles, refs, repos and the store's config."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from datetime import UTC, datetime, timedelta

import pytest

from datamon import Author, Store
from datamon.core.codecs import encode_frame, pack_msg, to_json
from datamon.core.ids import bundle_id, digest
from datamon.core.model import FORMAT_VERSION, Bundle, ChunkRef, Entry, Kind, StoreConfig, Tree
from datamon.errors import (
    AccessDenied,
    AmbiguousId,
    BundleNotFound,
    ChecksumMismatch,
    ConditionalWritesUnsupported,
    CorruptObject,
    InvalidName,
    ObjectNotFound,
    PathNotInBundle,
    RefConflict,
    RepoExists,
    RepoNotFound,
    UnsupportedFormat,
)
from datamon.metadata import trees as trees_module
from datamon.metadata.bundles import BundleStore
from datamon.metadata.layout import CONFIG, bundle_key, ref_key, repo_key, tree_key
from datamon.metadata.refs import ANY, RefStore
from datamon.metadata.repos import RepoStore
from datamon.metadata.storeconfig import load_or_create, probe_conditional_writes
from datamon.metadata.trees import PendingTrees, TreeStore
from datamon.storage.memory import MemoryBackend

T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
INVALID_NAMES = [
    "",
    "-starts-with-dash",
    ".hidden",
    "a/b",
    "a\\b",
    "a..b",
    "sp ace",
    "x" * 129,
    "ü",
    "new\nline",
    # Reserved by the local backend for its temporary and lock files.
    "v1.tmp-2",
    "main.lock",
]


@pytest.fixture
def meta() -> MemoryBackend:
    return MemoryBackend("meta")


def _file(name: str, size: int = 1, mtime: int = 0) -> Entry:
    return Entry(
        name, Kind.FILE, 0o644, mtime, size=size, chunks=(ChunkRef(bytes([size % 256]) * 32, size),)
    )


# trees ----------------------------------------------------------------------------------


class TestTrees:
    def test_put_get_is_content_addressed(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        a = [_file("b"), _file("a"), Entry("l", Kind.SYMLINK, 0o777, 5, target="a")]
        oid = trees.put(a)
        assert len(oid) == 32
        assert trees.put(list(reversed(a))) == oid  # order of input does not matter
        assert trees.written == 1
        assert [e.name for e in trees.get(oid).entries] == ["a", "b", "l"]
        assert trees.put([*a, _file("c")]) != oid
        assert meta.exists(tree_key(oid.hex()))

    def test_empty_directory(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        oid = trees.put([])
        assert list(trees.entries(oid)) == []
        assert list(trees.walk(oid)) == []

    def test_large_directory_is_split(
        self, meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trees_module, "SPLIT", 3)
        trees = TreeStore(meta)
        entries = [_file(f"f{i:02d}", size=i + 1) for i in range(10)]
        oid = trees.put(list(reversed(entries)))
        top = trees.get(oid)
        assert top.entries == ()
        assert len(top.parts) == 4  # 3 + 3 + 3 + 1
        assert [len(trees.get(p).entries) for p in top.parts] == [3, 3, 3, 1]
        assert list(trees.entries(oid)) == entries
        assert trees.written == 5
        for entry in entries:
            assert trees.lookup(oid, entry.name) == entry
        with pytest.raises(PathNotInBundle):
            trees.lookup(oid, "f99")

    def test_exactly_split_entries_is_one_object(
        self, meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trees_module, "SPLIT", 3)
        trees = TreeStore(meta)
        oid = trees.put([_file("a"), _file("b"), _file("c")])
        assert trees.get(oid).parts == ()
        assert trees.written == 1

    def test_split_parts_are_shared_by_similar_directories(
        self, meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trees_module, "SPLIT", 4)
        trees = TreeStore(meta)
        entries = [_file(f"f{i:02d}") for i in range(12)]
        trees.put(entries)
        before = trees.written
        changed = [*entries[:-1], _file("f11", size=7)]
        trees.put(changed)
        # Only the last part and the top object are new.
        assert trees.written - before == 2

    def test_pending_trees_are_stored_children_first(
        self, meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trees_module, "SPLIT", 2)
        trees = TreeStore(meta)
        pending = PendingTrees(trees)
        leaf = pending.add([_file("x")])
        files = [_file(f"f{i}") for i in range(3)]
        big = pending.add(files)  # two parts and their top
        top = pending.add([Entry("d", Kind.DIR, 0o755, 0, tree=leaf, files=1)])
        assert len(pending) == 5
        assert not any(k.startswith("trees/") for k in meta.list())
        parts = tuple(
            digest(pack_msg(Tree(format=FORMAT_VERSION, entries=tuple(files[i : i + 2]))))
            for i in (0, 2)
        )
        # What each tree names: it may be written only once these are stored.
        names = {big: parts, top: (leaf,)}
        failed = tree_key(parts[1].hex())
        stored: list[str] = []
        real = meta.put_if_absent

        def put_if_absent(key: str, data: bytes) -> bool:
            oid = bytes.fromhex(key.rsplit("/", 1)[-1])
            assert all(meta.exists(tree_key(c.hex())) for c in names.get(oid, ()))
            if key == failed and failed not in stored:
                stored.append(key)
                raise OSError("a write failed")
            stored.append(key)
            return real(key, data)

        monkeypatch.setattr(meta, "put_if_absent", put_if_absent)
        with pytest.raises(OSError, match="a write failed"):
            pending.write()
        # The other trees of the failed level were stored; none naming them was tried.
        assert sorted(stored) == sorted(tree_key(t.hex()) for t in (leaf, *parts))
        assert len(pending) == 3
        pending.write()  # resumes with the tree that failed
        assert len(pending) == 0
        pending.write()
        assert stored[3] == failed
        assert sorted(stored[4:]) == sorted(tree_key(t.hex()) for t in (big, top))
        assert trees.written == 5
        assert trees.put([Entry("d", Kind.DIR, 0o755, 0, tree=leaf, files=1)]) == top
        assert trees.written == 5

    def _nested(self, trees: TreeStore) -> bytes:
        deep = trees.put([_file("z.txt")])
        sub = trees.put([_file("x"), Entry("deep", Kind.DIR, 0o755, 0, tree=deep, files=1)])
        return trees.put(
            [
                _file("b.txt"),
                Entry("a", Kind.DIR, 0o755, 0, tree=sub, files=2),
                Entry("a.txt", Kind.SYMLINK, 0o777, 0, target="b.txt"),
                Entry("empty", Kind.DIR, 0o700, 0, tree=trees.put([])),
            ]
        )

    def test_walk_is_depth_first_in_name_order(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        root = self._nested(trees)
        assert [p for p, _e in trees.walk(root)] == [
            "a",
            "a/deep",
            "a/deep/z.txt",
            "a/x",
            "a.txt",
            "b.txt",
            "empty",
        ]
        assert [p for p, _e in trees.walk(root, "top/")][:2] == ["top/a", "top/a/deep"]

    def test_walk_across_split_directories(
        self, meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(trees_module, "SPLIT", 2)
        trees = TreeStore(meta)
        sub = trees.put([_file(f"s{i}") for i in range(5)])
        root = trees.put(
            [_file(f"r{i}") for i in range(3)] + [Entry("d", Kind.DIR, 0, 0, tree=sub)]
        )
        paths = [p for p, _e in trees.walk(root)]
        assert paths == ["d", "d/s0", "d/s1", "d/s2", "d/s3", "d/s4", "r0", "r1", "r2"]

    def test_lookup(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        root = self._nested(trees)
        assert trees.lookup(root, "a/deep/z.txt").name == "z.txt"
        assert trees.lookup(root, "/a/deep/").kind == Kind.DIR
        assert trees.lookup(root, "a.txt").target == "b.txt"
        for missing in ["", "/", "nope", "a/nope", "b.txt/inside", "a/deep/z.txt/x", "a.txt/x"]:
            with pytest.raises(PathNotInBundle):
                trees.lookup(root, missing)

    def test_tampered_tree_is_detected(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        oid = trees.put([_file("a")])
        _other, framed = encode_frame(
            pack_msg(Tree(format=FORMAT_VERSION, entries=(_file("evil"),)))
        )
        meta.put(tree_key(oid.hex()), framed)  # a valid frame, but not of this tree
        with pytest.raises(ChecksumMismatch) as info:
            trees.get(oid)
        assert oid.hex() in str(info.value)

    def test_damaged_tree_is_detected(self, meta: MemoryBackend) -> None:
        trees = TreeStore(meta)
        oid = trees.put([_file(f"f{i}") for i in range(50)])
        key = tree_key(oid.hex())
        data = bytearray(meta.get(key))
        data[-5] ^= 0xFF
        meta.put(key, bytes(data))
        with pytest.raises((ChecksumMismatch, CorruptObject)):
            list(trees.entries(oid))

    def test_missing_tree(self, meta: MemoryBackend) -> None:
        with pytest.raises(ObjectNotFound):
            TreeStore(meta).get(b"\x01" * 32)

    def test_future_tree_format_is_refused(self, meta: MemoryBackend) -> None:
        oid, framed = encode_frame(pack_msg(Tree(format=FORMAT_VERSION + 1)))
        meta.put(tree_key(oid.hex()), framed)
        with pytest.raises(UnsupportedFormat):
            TreeStore(meta).get(oid)


# bundles --------------------------------------------------------------------------------


def _bundle(message: str = "m", when: datetime = T0, repo: str = "r", **extra: object) -> Bundle:
    fields: dict[str, object] = {
        "format": FORMAT_VERSION,
        "repo": repo,
        "parents": (),
        "message": message,
        "author": Author("A", "a@example.com"),
        "timestamp": when,
        "tree": "00" * 32,
        "packs": (),
        "files": 0,
        "size": 0,
    }
    fields.update(extra)
    return Bundle(**fields)  # type: ignore[arg-type]


class TestBundles:
    def test_id_is_derived_from_content(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        bundle = _bundle()
        bid = bundles.put(bundle)
        assert bid == bundle_id(to_json(bundle))
        assert len(bid) == 40
        assert bundles.put(bundle) == bid  # idempotent
        assert bundles.put(_bundle("other")) != bid
        assert bundles.get("r", bid) == bundle
        assert bundles.exists("r", bid)
        assert meta.get(bundle_key("r", bid)) == to_json(bundle)

    def test_tampered_bundle_is_detected(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        bid = bundles.put(_bundle("pay alice"))
        key = bundle_key("r", bid)
        meta.put(key, meta.get(key).replace(b"pay alice", b"pay mallo"))
        with pytest.raises(ChecksumMismatch) as info:
            bundles.get("r", bid)
        assert info.value.key == key
        assert info.value.expected == bid

    def test_unknown_bundle(self, meta: MemoryBackend) -> None:
        with pytest.raises(BundleNotFound) as info:
            BundleStore(meta).get("r", "ab" * 20)
        assert "ab" * 20 in str(info.value)

    def test_future_bundle_format_is_refused(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        bid = bundles.put(_bundle(format=FORMAT_VERSION + 1))
        with pytest.raises(UnsupportedFormat):
            bundles.get("r", bid)

    def test_bundles_are_per_repo(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        bid = bundles.put(_bundle(repo="one"))
        assert bundles.ids("one") == [bid]
        assert bundles.ids("two") == []
        assert bundles.ids("on") == []
        with pytest.raises(BundleNotFound):
            bundles.get("two", bid)

    def test_all_is_oldest_first(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        ids = [bundles.put(_bundle(f"m{i}", T0 + timedelta(seconds=10 - i))) for i in range(5)]
        assert [bid for bid, _b in bundles.all("r")] == list(reversed(ids))

    def test_prefix_resolution(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        ids = [bundles.put(_bundle(f"m{i}")) for i in range(20)]
        for bid in ids:
            assert bundles.resolve("r", bid) == bid
            assert bundles.resolve("r", bid.upper()) == bid
            assert bundles.resolve("r", f" {bid} ") == bid
            unique = next(
                bid[:n] for n in range(1, 41) if sum(o.startswith(bid[:n]) for o in ids) == 1
            )
            assert bundles.resolve("r", unique) == bid
        for bad in ["", "zz", "not-hex", "0" * 41]:
            with pytest.raises(BundleNotFound):
                bundles.resolve("r", bad)

    def test_ambiguous_prefix(self, meta: MemoryBackend) -> None:
        bundles = BundleStore(meta)
        ids = [bundles.put(_bundle(f"m{i}")) for i in range(20)]
        # 20 ids over 16 first digits: some digit starts two of them.
        first = next(d for d in "0123456789abcdef" if sum(i.startswith(d) for i in ids) > 1)
        with pytest.raises(AmbiguousId) as info:
            bundles.resolve("r", first)
        assert info.value.prefix == first
        assert set(info.value.candidates) == {i for i in ids if i.startswith(first)}
        assert len(info.value.candidates) >= 2


# refs -----------------------------------------------------------------------------------


class TestRefs:
    def test_move_keeps_history(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        assert refs.read("r", "label", "prod") is None
        first = refs.move("r", "label", "prod", "a" * 40, "ada@x")
        assert first.bundle == "a" * 40
        assert [(m.bundle, m.previous) for m in first.history] == [("a" * 40, None)]
        refs.move("r", "label", "prod", "b" * 40, "bob@x")
        third = refs.move("r", "label", "prod", "c" * 40, "cy@x")
        assert [(m.bundle, m.previous, m.author) for m in third.history] == [
            ("a" * 40, None, "ada@x"),
            ("b" * 40, "a" * 40, "bob@x"),
            ("c" * 40, "b" * 40, "cy@x"),
        ]
        found = refs.read("r", "label", "prod")
        assert found is not None
        assert found[0] == third
        assert found[0].kind == "label"
        assert found[0].name == "prod"

    def test_expected_none_refuses_existing(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        refs.move("r", "branch", "main", "a" * 40, "x", None)
        with pytest.raises(RefConflict):
            refs.move("r", "branch", "main", "b" * 40, "x", None)
        found = refs.read("r", "branch", "main")
        assert found is not None
        assert found[0].bundle == "a" * 40

    def test_expected_bundle_conflict(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        refs.move("r", "branch", "main", "a" * 40, "x")
        refs.move("r", "branch", "main", "b" * 40, "x", "a" * 40)
        with pytest.raises(RefConflict) as info:
            refs.move("r", "branch", "main", "c" * 40, "x", "a" * 40)  # stale
        assert info.value.actual == "b" * 40
        found = refs.read("r", "branch", "main")
        assert found is not None
        assert found[0].bundle == "b" * 40
        assert len(found[0].history) == 2

    def test_lost_race_is_a_conflict_when_expected(self, meta: MemoryBackend) -> None:
        # Another writer moves the ref between our read and our swap.
        refs = RefStore(meta)
        refs.move("r", "branch", "main", "a" * 40, "x")

        class Racing(MemoryBackend):
            raced = False

            def compare_and_swap(
                self, key: str, data: bytes | bytearray, expected: str | None
            ) -> str:
                if not self.raced:
                    self.raced = True
                    RefStore(meta).move("r", "branch", "main", "e" * 40, "other")
                return meta.compare_and_swap(key, data, expected)

            def get_versioned(self, key: str) -> tuple[bytes, str]:
                return meta.get_versioned(key)

        with pytest.raises(RefConflict):
            RefStore(Racing()).move("r", "branch", "main", "b" * 40, "x", "a" * 40)
        # Without an expectation the move retries and lands on top of the other one.
        refs.move("r", "branch", "main", "a" * 40, "x")
        racing = Racing()
        moved = RefStore(racing).move("r", "branch", "main", "c" * 40, "x")
        assert racing.raced
        assert [m.bundle for m in moved.history][-2:] == ["e" * 40, "c" * 40]

    @pytest.mark.parametrize("expected", [ANY, "a" * 40], ids=["any", "expected"])
    def test_a_move_that_landed_but_was_reported_a_conflict_is_not_made_again(
        self, meta: MemoryBackend, expected: object
    ) -> None:
        # The store takes the swap, its reply is lost, another writer moves the ref on top,
        # and the retry (RetryingBackend) finds other bytes there: a RefConflict.
        refs = RefStore(meta)
        refs.move("r", "label", "prod", "a" * 40, "x")

        class LostReply(MemoryBackend):
            lost = False

            def compare_and_swap(
                self, key: str, data: bytes | bytearray, expected: str | None
            ) -> str:
                version = meta.compare_and_swap(key, data, expected)
                if self.lost:
                    return version
                self.lost = True
                refs.move("r", "label", "prod", "e" * 40, "other")
                raise RefConflict(key, expected, "overtaken")

            def get_versioned(self, key: str) -> tuple[bytes, str]:
                return meta.get_versioned(key)

        moved = RefStore(LostReply()).move("r", "label", "prod", "b" * 40, "ada@x", expected)
        assert moved.bundle == "b" * 40
        found = refs.read("r", "label", "prod")
        assert found is not None
        assert [(m.bundle, m.author) for m in found[0].history] == [
            ("a" * 40, "x"),
            ("b" * 40, "ada@x"),
            ("e" * 40, "other"),
        ]
        assert found[0].history[1] == moved.history[-1]

    def test_a_branch_in_the_folder_of_older_stores_is_read_there_and_moved_to_the_new_one(
        self, meta: MemoryBackend
    ) -> None:
        # Stores written before 2026-11-28 kept branches under branchs/, in format 1 too.
        refs = RefStore(meta)
        refs.move("r", "branch", "main", "a" * 40, "x")
        refs.move("r", "branch", "main", "b" * 40, "x")
        old = meta.get(ref_key("r", "branch", "main"))
        meta.put("branchs/r/main.json", old)
        meta.delete(ref_key("r", "branch", "main"))
        assert [ref.name for ref in refs.all("r", "branch")] == ["main"]
        found = refs.read("r", "branch", "main")
        assert found is not None
        assert [m.bundle for m in found[0].history] == ["a" * 40, "b" * 40]
        assert found[1] is None  # no version: a move creates it where branches are now
        assert not meta.exists(ref_key("r", "branch", "main"))  # reading wrote nothing
        moved = refs.move("r", "branch", "main", "c" * 40, "x", "b" * 40)
        assert [m.previous for m in moved.history] == [None, "a" * 40, "b" * 40]
        again = refs.read("r", "branch", "main")
        assert again is not None and again[0] == moved and again[1] is not None
        assert meta.get("branchs/r/main.json") == old  # left as it was
        # A branch made anew in the new folder (by an older Datamon) stands; the old one is
        # not read. Making anew one that the old folder has is a conflict.
        meta.put("branchs/r/dev.json", old)
        elsewhere = MemoryBackend()
        RefStore(elsewhere).move("r", "branch", "dev", "d" * 40, "x", None)
        meta.put(ref_key("r", "branch", "dev"), elsewhere.get(ref_key("r", "branch", "dev")))
        dev = refs.read("r", "branch", "dev")
        assert dev is not None and [m.bundle for m in dev[0].history] == ["d" * 40]
        meta.put("branchs/r/old.json", old)
        with pytest.raises(RefConflict):
            refs.move("r", "branch", "old", "e" * 40, "x", None)
        assert refs.read("r", "branch", "nothing") is None
        assert refs.read("r", "label", "main") is None

    def test_a_branch_of_the_older_folder_is_read_with_no_right_to_write(
        self, meta: MemoryBackend
    ) -> None:
        RefStore(meta).move("r", "branch", "main", "a" * 40, "x")
        meta.put("branchs/r/main.json", meta.get(ref_key("r", "branch", "main")))
        meta.delete(ref_key("r", "branch", "main"))

        class ReadOnly(MemoryBackend):
            def get(self, key: str) -> bytes:
                return meta.get(key)

            def get_versioned(self, key: str) -> tuple[bytes, str]:
                return meta.get_versioned(key)

            def list(self, prefix: str = "") -> Iterator[str]:
                return meta.list(prefix)

            def compare_and_swap(
                self, key: str, data: bytes | bytearray, expected: str | None
            ) -> str:
                raise AccessDenied(key)

            def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
                raise AccessDenied(key)

            def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
                raise AccessDenied(key)

            def delete(self, key: str) -> None:
                raise AccessDenied(key)

        refs = RefStore(ReadOnly())
        assert [ref.bundle for ref in refs.all("r", "branch")] == ["a" * 40]
        found = refs.read("r", "branch", "main")
        assert found is not None and found[0].bundle == "a" * 40

    def test_a_store_without_the_older_folder_is_not_listed_there_again(
        self, meta: MemoryBackend
    ) -> None:
        listed: list[str] = []

        class Counting(MemoryBackend):
            def list(self, prefix: str = "") -> Iterator[str]:
                listed.append(prefix)
                return super().list(prefix)

        refs = RefStore(Counting())
        refs.move("r", "branch", "main", "a" * 40, "x")
        for _ in range(3):
            assert [ref.name for ref in refs.all("r", "branch")] == ["main"]
        assert listed == ["branches/r/", "branchs/r/", "branches/r/", "branches/r/"]

    def test_concurrent_moves_all_recorded(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        errors: list[BaseException] = []

        def mover(n: int) -> None:
            try:
                for i in range(10):
                    refs.move("r", "label", "busy", f"{n:02d}{i:02d}".ljust(40, "0"), f"w{n}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=mover, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        found = refs.read("r", "label", "busy")
        assert found is not None
        history = found[0].history
        assert len(history) == 60
        assert len({m.bundle for m in history}) == 60
        for before, after in itertools.pairwise(history):
            assert after.previous == before.bundle

    def test_all(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        for name in ["b", "a", "c.d"]:
            refs.move("r", "label", name, "a" * 40, "x")
        refs.move("r", "branch", "main", "a" * 40, "x")
        refs.move("other", "label", "z", "a" * 40, "x")
        assert [r.name for r in refs.all("r", "label")] == ["a", "b", "c.d"]
        assert [r.name for r in refs.all("r", "branch")] == ["main"]
        assert refs.all("nobody", "label") == []

    @pytest.mark.parametrize("name", INVALID_NAMES)
    def test_invalid_names(self, meta: MemoryBackend, name: str) -> None:
        refs = RefStore(meta)
        with pytest.raises(InvalidName):
            refs.move("r", "label", name, "a" * 40, "x")
        with pytest.raises(InvalidName):
            refs.read("r", "branch", name)
        assert list(meta.list()) == []

    def test_future_ref_format_is_refused(self, meta: MemoryBackend) -> None:
        refs = RefStore(meta)
        ref = refs.move("r", "label", "v", "a" * 40, "x")
        meta.put(ref_key("r", "label", "v"), to_json(ref).replace(b'"format":1', b'"format":9'))
        with pytest.raises(UnsupportedFormat):
            refs.read("r", "label", "v")

    def test_corrupt_ref(self, meta: MemoryBackend) -> None:
        meta.put(ref_key("r", "label", "v"), b"{garbage")
        with pytest.raises(CorruptObject):
            RefStore(meta).read("r", "label", "v")


# repos ----------------------------------------------------------------------------------


class TestRepos:
    def test_create_get_all(self, meta: MemoryBackend) -> None:
        repos = RepoStore(meta)
        who = Author("A", "a@x")
        made = repos.create("images", "cat pictures", who)
        repos.create("audio.v2", "", who)
        assert repos.get("images") == made
        assert made.description == "cat pictures"
        assert made.author == who
        assert [r.name for r in repos.all()] == ["audio.v2", "images"]

    def test_exists(self, meta: MemoryBackend) -> None:
        repos = RepoStore(meta)
        repos.create("images", "first", Author("A", "a@x"))
        with pytest.raises(RepoExists) as info:
            repos.create("images", "second", Author("B", "b@x"))
        assert info.value.name == "images"
        assert repos.get("images").description == "first"

    def test_not_found(self, meta: MemoryBackend) -> None:
        with pytest.raises(RepoNotFound) as info:
            RepoStore(meta).get("ghost")
        assert isinstance(info.value, LookupError)
        assert "ghost" in str(info.value)

    @pytest.mark.parametrize("name", INVALID_NAMES)
    def test_invalid_names(self, meta: MemoryBackend, name: str) -> None:
        repos = RepoStore(meta)
        with pytest.raises(InvalidName) as info:
            repos.create(name, "", Author("A", "a@x"))
        assert info.value.kind == "repo"
        with pytest.raises(InvalidName):
            repos.get(name)
        assert list(meta.list()) == []

    def test_future_repo_format_is_refused(self, meta: MemoryBackend) -> None:
        RepoStore(meta).create("r", "", Author("A", "a@x"))
        meta.put(repo_key("r"), meta.get(repo_key("r")).replace(b'"format":1', b'"format":2'))
        with pytest.raises(UnsupportedFormat):
            RepoStore(meta).get("r")


# store config ---------------------------------------------------------------------------


class IgnoresConditions(MemoryBackend):
    """A bucket that accepts every conditional write, as some S3 clones do."""

    def compare_and_swap(self, key: str, data: bytes | bytearray, expected: str | None) -> str:
        self.put(key, data)
        return self.stat(key).version


class IgnoresIfMatch(MemoryBackend):
    """Honours create-only writes, but not writes guarded by a version."""

    def compare_and_swap(self, key: str, data: bytes | bytearray, expected: str | None) -> str:
        if expected is None:
            return super().compare_and_swap(key, data, None)
        self.put(key, data)
        return self.stat(key).version


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__("counting")
        self.swaps = 0

    def compare_and_swap(self, key: str, data: bytes | bytearray, expected: str | None) -> str:
        self.swaps += 1
        return super().compare_and_swap(key, data, expected)


class TestStoreConfig:
    def test_created_once(self, meta: MemoryBackend) -> None:
        first = load_or_create(meta)
        assert first.format == FORMAT_VERSION
        assert load_or_create(meta) == first
        assert Store(meta).config == first
        assert [k for k in meta.list() if not k.startswith("probe/")] == [CONFIG]
        assert list(meta.list("probe/")) == []  # the probe cleans up

    def test_open_without_create(self, meta: MemoryBackend) -> None:
        with pytest.raises(ObjectNotFound):
            load_or_create(meta, create=False)
        assert list(meta.list()) == []

    def test_probe_runs_only_on_creation(self) -> None:
        meta = CountingBackend()
        load_or_create(meta)
        assert meta.swaps >= 2
        meta.swaps = 0
        load_or_create(meta)
        assert meta.swaps == 0

    @pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 99])
    def test_unknown_format_is_refused(self, meta: MemoryBackend, version: int) -> None:
        config = StoreConfig(format=version, id="x" * 32, created=T0)
        meta.put(CONFIG, to_json(config))
        with pytest.raises(UnsupportedFormat) as info:
            Store(meta)
        assert info.value.version == version
        with pytest.raises(UnsupportedFormat):
            load_or_create(meta)

    def test_corrupt_config(self, meta: MemoryBackend) -> None:
        meta.put(CONFIG, b"not json")
        with pytest.raises(CorruptObject):
            load_or_create(meta)

    def test_config_parameters_are_read_back(self, meta: MemoryBackend) -> None:
        config = StoreConfig(format=FORMAT_VERSION, id="y" * 32, created=T0, pack_size=1234)
        meta.put(CONFIG, to_json(config))
        store = Store(meta)
        assert store.config == config
        assert store.config.pack_size == 1234

    @pytest.mark.parametrize("backend_type", [IgnoresConditions, IgnoresIfMatch])
    def test_backend_without_conditional_writes_is_refused(
        self, backend_type: type[MemoryBackend]
    ) -> None:
        meta = backend_type("fake")
        with pytest.raises(ConditionalWritesUnsupported) as info:
            Store(meta)
        assert "memory://fake" in str(info.value)
        assert list(meta.list()) == []  # no config written, probe removed
        with pytest.raises(ConditionalWritesUnsupported):
            probe_conditional_writes(meta)

    def test_honest_backend_passes_the_probe(self, meta: MemoryBackend) -> None:
        probe_conditional_writes(meta)
        assert list(meta.list()) == []


@pytest.mark.parametrize("kind", ["repo", "label"])
def test_trailing_newline_is_an_invalid_name(meta: MemoryBackend, kind: str) -> None:
    # Found broken: check_name used re.match with '$', which matches before a final newline.
    with pytest.raises(InvalidName):
        if kind == "repo":
            RepoStore(meta).create("main\n", "", Author("A", "a@x"))
        else:
            RefStore(meta).move("r", "label", "main\n", "a" * 40, "x")


def test_a_split_tree_comes_after_a_part_shared_with_a_deeper_folder(
    meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trees_module, "SPLIT", 2)
    pending = PendingTrees(TreeStore(meta))
    leaf = pending.add([_file("x")])
    # v2's first part (f1, f2) names nothing, but takes v2's level: above the leaf's.
    pending.add([_file("f1"), _file("f2"), Entry("zzz", Kind.DIR, 0o755, 0, tree=leaf)])
    v1 = pending.add([_file("f1"), _file("f2"), _file("f3")])
    shared = digest(pack_msg(Tree(format=FORMAT_VERSION, entries=(_file("f1"), _file("f2")))))
    levels = {oid: level for oid, (level, _payload) in pending._trees.items()}
    assert levels[v1] > levels[shared] > levels[leaf]
    pending.write()
    assert TreeStore(meta).get(v1).parts[0] == shared


def test_eager_trees_are_written_as_added_and_a_failed_child_holds_its_parent(
    meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = PendingTrees(TreeStore(meta), workers=2, eager=True)
    real = meta.put_if_absent
    failed: list[str] = []
    written: list[str] = []

    def put_if_absent(key: str, data: bytes) -> bool:
        if key.startswith("trees/") and not failed:
            failed.append(key)
            raise OSError("a write failed")
        written.append(key)
        return real(key, data)

    monkeypatch.setattr(meta, "put_if_absent", put_if_absent)
    leaf = pending.add([_file("x")])
    top = pending.add([Entry("d", Kind.DIR, 0o755, 0, tree=leaf, files=1)])
    other = pending.add([_file("y")])
    # The background writes end (the leaf's fails, so its parent's does), so that none is
    # still queued, and cancelled, when write() comes.
    wait(list(pending._writes.values()))
    pending.write()  # writes what failed, in order
    assert failed == [tree_key(leaf.hex())]
    assert written.index(tree_key(leaf.hex())) < written.index(tree_key(top.hex()))
    assert tree_key(other.hex()) in written and len(pending) == 0
    assert TreeStore(meta).get(top).entries[0].tree == leaf


def _before_each_write(
    meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch, before: Callable[[str], object]
) -> None:
    """``before(key)`` runs ahead of every create-only write to ``meta``."""
    real = meta.put_if_absent

    def put_if_absent(key: str, data: bytes) -> bool:
        before(key)
        return real(key, data)

    monkeypatch.setattr(meta, "put_if_absent", put_if_absent)


def test_eager_trees_still_queued_at_write_are_written_several_at_a_time_children_first(
    meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One background writer; what it has not begun when write() comes is written by up to
    # `workers` threads, level by level, instead of one at a time behind it.
    pending = PendingTrees(TreeStore(meta), workers=4, eager=True)
    first_held = threading.Event()
    release = threading.Event()
    both = threading.Barrier(2, timeout=5)  # passed only by two writes at the same time
    places = iter(range(2))  # the two leaves of the flush that meet at the barrier
    written: list[tuple[str, str]] = []

    def before(key: str) -> None:
        if not first_held.is_set():
            first_held.set()
            assert release.wait(10)
        elif key != tree_key(top.hex()) and next(places, None) is not None:
            both.wait()
        written.append((key, threading.current_thread().name))

    _before_each_write(meta, monkeypatch, before)
    real_wait = trees_module.wait

    def wait(futures: list[Future[None]]) -> object:
        # write() has cancelled what the background writer had not begun: let it go on.
        release.set()
        return real_wait(futures)

    monkeypatch.setattr(trees_module, "wait", wait)
    leaves = [pending.add([_file(f"x{i}", size=i + 1)]) for i in range(6)]
    top = pending.add(
        [Entry(f"d{i}", Kind.DIR, 0o755, 0, tree=leaf, files=1) for i, leaf in enumerate(leaves)]
    )
    assert first_held.wait(10)  # the background writer holds the first leaf
    pending.write()
    keys = [key for key, _thread in written]
    assert keys[0] == tree_key(leaves[0].hex())
    assert sorted(keys[1:6]) == sorted(tree_key(leaf.hex()) for leaf in leaves[1:])
    assert keys[6:] == [tree_key(top.hex())]
    assert len({thread for _key, thread in written[1:]}) >= 2
    assert len(pending) == 0
    assert [e.tree for e in TreeStore(meta).get(top).entries] == leaves


def test_write_after_abort_writes_what_the_background_writer_left(
    meta: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # abort() cancels queued writes that no worker will ever mark done: write() must not
    # wait for them.
    pending = PendingTrees(TreeStore(meta), workers=2, eager=True)
    release = threading.Event()

    def held(_key: str) -> None:
        assert release.wait(10)

    _before_each_write(meta, monkeypatch, held)
    leaves = [pending.add([_file(f"x{i}", size=i + 1)]) for i in range(4)]
    threading.Timer(0.1, release.set).start()
    pending.abort()
    done = threading.Thread(target=pending.write, daemon=True)
    done.start()
    done.join(10)
    assert not done.is_alive()
    assert len(pending) == 0
    assert all(TreeStore(meta).exists(leaf) for leaf in leaves)

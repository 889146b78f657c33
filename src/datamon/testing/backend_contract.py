"""The behaviour every Backend must show, as a reusable pytest mixin.

Subclass :class:`BackendContract` in a ``Test*`` class and provide a ``backend``
fixture returning a fresh, empty backend::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self, tmp_path: Path) -> Backend:
            return MyBackend(tmp_path)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from datamon.errors import ObjectNotFound, RefConflict, StorageError
from datamon.storage.base import Backend

INVALID_KEYS = ("../x", "/abs", "a//b", "", "a/", "./x", "a/../b")


class BackendContract:
    def test_satisfies_protocol(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(backend.url, str) and backend.url

    def test_put_get_roundtrip(self, backend: Backend) -> None:
        payload = bytes(range(256)) * 3
        backend.put("blob", payload)
        backend.put("nested/deeper/blob", b"inner")
        backend.put("empty", b"")
        assert backend.get("blob") == payload
        assert backend.get("nested/deeper/blob") == b"inner"
        assert backend.get("empty") == b""

    def test_unusual_key_characters(self, backend: Backend) -> None:
        keys = {"odd/with space", "odd/ünïcode", "odd/a+b=c", "odd/a%20b"}
        for key in keys:
            backend.put(key, key.encode())
        for key in keys:
            assert backend.get(key) == key.encode()
        assert set(backend.list("odd/")) == keys

    def test_missing_key(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound) as info:
            backend.get("missing")
        assert isinstance(info.value, KeyError)
        assert info.value.key == "missing"
        with pytest.raises(ObjectNotFound):
            backend.get_versioned("missing")
        with pytest.raises(ObjectNotFound):
            backend.get_range("missing", 0, 10)
        with pytest.raises(ObjectNotFound):
            backend.stat("missing/deeper")
        assert not backend.exists("missing")

    def test_get_range(self, backend: Backend) -> None:
        data = bytes(range(256)) * 4
        backend.put("r", data)
        assert backend.get_range("r", 0, 10) == data[:10]
        assert backend.get_range("r", 100, 50) == data[100:150]
        assert backend.get_range("r", 1000, 100) == data[1000:]
        assert backend.get_range("r", len(data), 10) == b""
        assert backend.get_range("r", len(data) + 100, 10) == b""
        assert backend.get_range("r", 5, 0) == b""

    def test_get_range_view(self, backend: Backend) -> None:
        data = bytes(range(256)) * 4
        backend.put("r", data)
        for start, length in ((0, 10), (100, 50), (1000, 100), (len(data), 10), (5, 0)):
            view = backend.get_range_view("r", start, length)
            assert isinstance(view, memoryview) and view.readonly
            assert bytes(view) == data[start : start + length]
        with pytest.raises(ObjectNotFound):
            backend.get_range_view("missing", 0, 10)

    def test_put_overwrites_atomically(self, backend: Backend) -> None:
        first, second = b"a" * 100_000, b"b" * 150_000
        backend.put("obj", first)
        seen: set[bytes] = set()
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.add(backend.get("obj"))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for i in range(10):
                backend.put("obj", second if i % 2 == 0 else first)
        finally:
            done.set()
            reader.join(timeout=30)
        assert seen <= {first, second}
        assert backend.get("obj") == first

    def test_put_if_absent(self, backend: Backend) -> None:
        assert backend.put_if_absent("once", b"first") is True
        assert backend.put_if_absent("once", b"second") is False
        assert backend.get("once") == b"first"

    def test_compare_and_swap_create(self, backend: Backend) -> None:
        version = backend.compare_and_swap("ref", b"v1", None)
        assert isinstance(version, str) and version
        assert backend.get_versioned("ref") == (b"v1", version)

    def test_compare_and_swap_update(self, backend: Backend) -> None:
        v1 = backend.compare_and_swap("ref", b"v1", None)
        v2 = backend.compare_and_swap("ref", b"v2", v1)
        assert v2 != v1
        assert backend.get_versioned("ref") == (b"v2", v2)

    def test_compare_and_swap_stale_version(self, backend: Backend) -> None:
        v1 = backend.compare_and_swap("ref", b"v1", None)
        backend.compare_and_swap("ref", b"v2", v1)
        with pytest.raises(RefConflict) as info:
            backend.compare_and_swap("ref", b"v3", v1)
        assert info.value.name == "ref"
        assert info.value.expected == v1
        assert backend.get("ref") == b"v2"

    def test_compare_and_swap_none_when_exists(self, backend: Backend) -> None:
        backend.put("ref", b"there")
        with pytest.raises(RefConflict):
            backend.compare_and_swap("ref", b"mine", None)
        assert backend.get("ref") == b"there"

    def test_compare_and_swap_deleted_object(self, backend: Backend) -> None:
        v1 = backend.compare_and_swap("ref", b"v1", None)
        backend.delete("ref")
        with pytest.raises(RefConflict):
            backend.compare_and_swap("ref", b"v2", v1)
        assert not backend.exists("ref")

    def test_version_changes_on_every_write(self, backend: Backend) -> None:
        # Distinct contents: stores whose version is a content hash (ETags, the
        # local backend) legitimately repeat a version for identical bytes.
        backend.put("obj", b"one")
        v1 = backend.get_versioned("obj")[1]
        backend.put("obj", b"two")
        v2 = backend.get_versioned("obj")[1]
        v3 = backend.compare_and_swap("obj", b"three", v2)
        assert len({v1, v2, v3}) == 3
        assert backend.stat("obj").version == v3

    def test_list(self, backend: Backend) -> None:
        keys = {"a", "b/c", "b/d/e", "bb/f"}
        for key in keys:
            backend.put(key, b"x")
        assert set(backend.list()) == keys
        assert set(backend.list("")) == keys
        assert set(backend.list("b/")) == {"b/c", "b/d/e"}
        assert set(backend.list("b/d/")) == {"b/d/e"}
        assert list(backend.list("zz/")) == []
        with pytest.raises(StorageError):
            list(backend.list("b"))

    def test_delete(self, backend: Backend) -> None:
        backend.put("gone", b"x")
        assert backend.exists("gone")
        backend.delete("gone")
        assert not backend.exists("gone")
        with pytest.raises(ObjectNotFound):
            backend.get("gone")
        backend.delete("gone")
        backend.delete("never/existed")

    def test_flush_keeps_what_was_written(self, backend: Backend) -> None:
        backend.put("durable/a", b"a")
        assert backend.put_if_absent("durable/b", b"b")
        backend.flush()
        backend.flush()
        assert backend.get("durable/a") == b"a"
        assert backend.get("durable/b") == b"b"

    def test_stat(self, backend: Backend) -> None:
        backend.put("sized", b"12345")
        info = backend.stat("sized")
        assert (info.key, info.size) == ("sized", 5)
        assert info.version == backend.get_versioned("sized")[1]

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_rejected(self, backend: Backend, key: str) -> None:
        attempts: dict[str, Callable[[], object]] = {
            "get": lambda: backend.get(key),
            "get_range": lambda: backend.get_range(key, 0, 1),
            "put": lambda: backend.put(key, b"x"),
            "put_if_absent": lambda: backend.put_if_absent(key, b"x"),
            "compare_and_swap": lambda: backend.compare_and_swap(key, b"x", None),
            "delete": lambda: backend.delete(key),
            "exists": lambda: backend.exists(key),
            "stat": lambda: backend.stat(key),
        }
        for name, attempt in attempts.items():
            with pytest.raises(StorageError) as info:
                attempt()
            assert not isinstance(info.value, ObjectNotFound), name
        assert list(backend.list()) == []

    def test_concurrent_compare_and_swap(self, backend: Backend) -> None:
        backend.compare_and_swap("counter", b"0", None)
        errors: list[BaseException] = []

        def increment_ten_times() -> None:
            try:
                for _ in range(10):
                    while True:
                        data, version = backend.get_versioned("counter")
                        try:
                            backend.compare_and_swap("counter", b"%d" % (int(data) + 1), version)
                            break
                        except RefConflict:
                            continue
            except BaseException as exc:  # surfaced in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=increment_ten_times) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert backend.get("counter") == b"80"

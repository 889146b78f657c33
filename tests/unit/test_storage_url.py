"""open_backend: which backend a location string gives, without touching the network."""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

import pytest

from datamon.errors import ConfigError
from datamon.storage import Backend, open_backend
from datamon.storage import local as local_module
from datamon.storage.local import LocalBackend
from datamon.storage.memory import MemoryBackend
from datamon.storage.objectstore import ObjectStoreBackend
from datamon.storage.retry import RetryingBackend

AZURE_DUMMY = {"account_name": "devaccount", "account_key": "ZHVtbXkta2V5"}
GCS_DUMMY = {"skip_signature": "true"}
S3_DUMMY = {"region": "eu-west-1", "access_key_id": "AKIDEXAMPLE", "secret_access_key": "s"}


@pytest.fixture(autouse=True)
def no_cloud_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)


def cloud(location: str, options: dict[str, str]) -> ObjectStoreBackend:
    backend = open_backend(location, options)
    assert isinstance(backend, RetryingBackend)
    assert isinstance(backend.inner, ObjectStoreBackend)
    return backend.inner


def test_plain_path(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "store"))
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "store"
    assert backend.url == (tmp_path / "store").as_uri()


def test_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    backend = open_backend("rel/store")
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "rel" / "store"


def test_file_url(tmp_path: Path) -> None:
    location = (tmp_path / "with space").as_uri()
    backend = open_backend(location)
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "with space"
    assert backend.url == location


def test_memory_same_name_same_backend() -> None:
    first = open_backend("memory://shared-url-test")
    first.put("k", b"v")
    second = open_backend("memory://shared-url-test")
    assert second is first
    assert second.get("k") == b"v"
    other = open_backend("memory://other-url-test")
    assert other is not first
    assert not other.exists("k")
    assert isinstance(first, MemoryBackend)
    assert first.url == "memory://shared-url-test"


@pytest.mark.parametrize(
    ("location", "bucket", "prefix"),
    [
        ("s3://my-bucket/some/prefix", "my-bucket", "some/prefix"),
        ("s3://my-bucket/some/prefix/", "my-bucket", "some/prefix"),
        ("s3://my-bucket", "my-bucket", ""),
    ],
)
def test_s3_location(location: str, bucket: str, prefix: str) -> None:
    backend = cloud(location, S3_DUMMY)
    assert (backend.bucket, backend.prefix) == (bucket, prefix)
    assert backend.url == location
    assert isinstance(open_backend(location, S3_DUMMY), Backend)


@pytest.mark.parametrize(
    ("location", "bucket", "prefix"),
    [
        ("gs://my-bucket/some/prefix", "my-bucket", "some/prefix"),
        ("gs://my-bucket", "my-bucket", ""),
    ],
)
def test_gcs_location(location: str, bucket: str, prefix: str) -> None:
    backend = cloud(location, GCS_DUMMY)
    assert (backend.bucket, backend.prefix) == (bucket, prefix)
    assert backend.url == location
    again = cloud(backend.url, GCS_DUMMY)
    assert (again.bucket, again.prefix) == (bucket, prefix)


def test_gcs_endpoint_option_is_accepted() -> None:
    backend = cloud("gs://b/p", {**GCS_DUMMY, "endpoint": "http://127.0.0.1:4443"})
    assert backend.bucket == "b"


@pytest.mark.parametrize(
    "location",
    ["az://container/some/prefix", "abfs://container/some/prefix", "azure://container/some/prefix"],
)
def test_azure_location(location: str) -> None:
    backend = cloud(location, AZURE_DUMMY)
    assert (backend.bucket, backend.prefix) == ("container", "some/prefix")
    assert backend.url == location
    again = cloud(backend.url, AZURE_DUMMY)
    assert (again.bucket, again.prefix) == ("container", "some/prefix")


def test_azure_without_account_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="az://container/p"):
        open_backend("az://container/p", {})


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bogus") as info:
        open_backend("s3://b/p", {**S3_DUMMY, "bogus": "1"})
    assert "\n" not in str(info.value)


def test_bad_retry_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_retries"):
        open_backend("s3://b/p", {**S3_DUMMY, "max_retries": "many"})


@pytest.mark.parametrize("location", ["ftp://host/path", "http://example.com/x", "hdfs://nn/p"])
def test_unknown_scheme(location: str) -> None:
    with pytest.raises(ConfigError, match="unsupported store location"):
        open_backend(location)


def test_empty_location() -> None:
    with pytest.raises(ConfigError):
        open_backend("")


def test_flush_syncs_without_searching_for_libc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs is Linux's")

    def no_search(_name: str) -> str:
        raise AssertionError("find_library runs ldconfig")

    monkeypatch.setattr(ctypes.util, "find_library", no_search)
    local_module._syncfs.cache_clear()
    synced: list[int] = []
    real = local_module._syncfs()
    assert real is not None
    monkeypatch.setattr(local_module, "_syncfs", lambda: lambda fd: synced.append(fd) or real(fd))
    backend = LocalBackend(tmp_path / "store")
    backend.flush()  # nothing written: nothing to sync
    for i in range(local_module.FSYNC_MAX + 1):
        backend.put(f"a/{i}", b"x")
    backend.flush()
    assert len(synced) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_flush_of_a_few_objects_fsyncs_them_and_their_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[str]
) -> None:
    backend = LocalBackend(tmp_path / "store")
    backend.put("a/b/one", b"1")
    assert backend.put_if_absent("a/two", b"2")
    assert not backend.put_if_absent("a/two", b"2")
    backend.put("gone", b"3")
    backend.delete("gone")  # e.g. a bundle dropped after a lost compare-and-swap
    monkeypatch.setattr(local_module, "_syncfs", lambda: pytest.fail("syncfs"))
    backend.flush()
    root = str(backend.root)
    assert synced == [
        f"{root}/a/b/one",
        f"{root}/a/two",
        f"{root}/a/b",
        f"{root}/a",
        root,
    ]
    synced.clear()
    backend.flush()  # nothing new
    assert synced == []
    # Already there, but perhaps written by another process that has not flushed yet: a ref
    # moved after this flush may name it, so it is synced too (cheap when already clean).
    assert not backend.put_if_absent("a/two", b"2")
    backend.flush()
    assert synced == [f"{root}/a/two", f"{root}/a", root]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_large_objects_are_synced_as_written_and_their_folders_at_flush(
    tmp_path: Path, synced: list[str]
) -> None:
    backend = LocalBackend(tmp_path / "store")
    backend.put("small", b"x" * (local_module.EARLY_SYNC - 1))
    assert synced == []  # left for the flush
    assert backend.put_if_absent("p/pack", memoryview(bytearray(local_module.EARLY_SYNC)))
    # The file before it was linked into place: unnamed (the kernel shows it as deleted),
    # or a temporary file where the file system makes no unnamed files.
    assert len(synced) == 1 and synced[0].startswith(f"{backend.root}/p/")
    if backend._unnamed:
        assert synced[0].endswith(" (deleted)")
    else:
        assert local_module.TMP_MARK in synced[0]
    synced.clear()
    backend.flush()
    root = str(backend.root)
    # The folder entry of the large object still waits for the flush.
    assert f"{root}/p" in synced and root in synced

"""Fixtures of the storage-engine and API unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from datamon import Author, Store
from datamon.api import forked_scan
from datamon.cafs import chunker as chunker_module
from datamon.cafs import statcache
from datamon.config import CACHE_ENV
from datamon.storage import local as local_module
from datamon.storage.memory import MemoryBackend


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local cache (chunk index copies) for every test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written just now count as settled: the stat cache records them (it never
    records a file changed too shortly before it was read)."""
    monkeypatch.setattr(statcache, "RACY_NS", -(10**18))
    monkeypatch.setattr(statcache, "RACY_FINE_NS", -(10**18))


@pytest.fixture(params=["one process", "two processes"])
def scan_processes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Re-uploads scan in one process, or in two (forked_scan.py): for any tree uploaded
    before, the helper taking half of as few as two folders waiting. (Earlier tests leave
    threads in this process, which would keep it from forking; the helper takes no lock of
    theirs.)"""
    if request.param == "two processes":
        monkeypatch.setattr(forked_scan, "SPLIT_FILES", 0)
        monkeypatch.setattr(forked_scan, "SPLIT_FOLDERS", 2)
        monkeypatch.setattr(forked_scan, "can_fork", lambda: True)
    return str(request.param)


@pytest.fixture
def mem_store() -> Iterator[Store]:
    store = Store(MemoryBackend("test"))
    yield store
    store.close()


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(str(tmp_path / "store"))
    yield store
    store.close()


@pytest.fixture
def author() -> Author:
    return Author("Ada Lovelace", "ada@example.com")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths the chunker opens or reads, from now on."""
    paths: list[str] = []
    real_open = chunker_module.FastCDCChunker.open

    def counting_open(path: str) -> BinaryIO:
        paths.append(path)
        return real_open(path)

    real_read = chunker_module.FastCDCChunker.read

    def counting_read(path: str, size: int) -> bytes:
        paths.append(path)
        return real_read(path, size)

    monkeypatch.setattr(chunker_module.FastCDCChunker, "open", staticmethod(counting_open))
    monkeypatch.setattr(chunker_module.FastCDCChunker, "read", staticmethod(counting_read))
    return paths


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the local backend fsyncs from now on, in order, by the name /proc gives each
    (a file not yet linked into place is shown as deleted)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(local_module.os, "fsync", fsync)
    return paths

"""Fixtures of the storage-engine and API unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon import Author, Store
from datamon.config import CACHE_ENV
from datamon.storage.memory import MemoryBackend


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local cache (chunk index copies) for every test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


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

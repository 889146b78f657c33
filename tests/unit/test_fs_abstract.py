"""fsspec's own abstract test suites, run against ``datamon://`` over a memory store.

The installed fsspec ships no read-only suite: its suites (get, copy, put, open, pipe) build
their scenarios by writing, so they run here through Datamon's writes, each write outside a
transaction committing a bundle. ``get`` is the read side (bundle to local disk).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import fsspec.tests.abstract as abstract
import pytest

from datamon import Author, Repository, Store
from datamon.fs import DatamonFileSystem


class DatamonFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self) -> Iterator[DatamonFileSystem]:
        location = f"memory://abstract-{secrets.token_hex(6)}"
        author = Author("Ada Lovelace", "ada@example.com")
        Repository.create(Store.open(location), "repo", "abstract tests", author)
        yield DatamonFileSystem(store=location, author=author, skip_instance_cache=True)

    @pytest.fixture
    def fs_path(self) -> str:
        return "repo@main/base"


class TestDatamonGet(abstract.AbstractGetTests, DatamonFixtures):
    pass


class TestDatamonCopy(abstract.AbstractCopyTests, DatamonFixtures):
    pass


class TestDatamonPut(abstract.AbstractPutTests, DatamonFixtures):
    pass


class TestDatamonOpen(abstract.AbstractOpenTests, DatamonFixtures):
    pass


class TestDatamonPipe(abstract.AbstractPipeTests, DatamonFixtures):
    pass

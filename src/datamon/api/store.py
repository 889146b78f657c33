"""Store: one storage location (metadata and blob backends) and the components over it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from datamon.cafs.chunker import FastCDCChunker
from datamon.cafs.index import ChunkIndex
from datamon.cafs.reader import ChunkReader
from datamon.cafs.statcache import StatCache
from datamon.config import cache_dir
from datamon.core.model import StoreConfig
from datamon.errors import ObjectNotFound, StoreNotFound, StoreUnreachable
from datamon.metadata.bundles import BundleStore
from datamon.metadata.refs import RefStore
from datamon.metadata.repos import RepoStore
from datamon.metadata.storeconfig import load_or_create
from datamon.metadata.trees import TreeStore
from datamon.storage.base import Backend
from datamon.storage.url import local_path, open_backend


class Store:
    """Opened once per process and shared; cheap components hang off it."""

    def __init__(
        self,
        meta: Backend,
        blob: Backend | None = None,
        *,
        cache: Path | None = None,
        create: bool = True,
    ) -> None:
        self.meta = meta
        self.blob = blob or meta
        self.config: StoreConfig = load_or_create(meta, create=create)
        self.cache_dir = (cache or cache_dir()) / "stores" / self.config.id
        self.repos = RepoStore(meta)
        self.bundles = BundleStore(meta)
        self.refs = RefStore(meta)
        self.trees = TreeStore(meta)
        self.index = ChunkIndex(self.blob, self.cache_dir / "index.sqlite")
        self.chunker = FastCDCChunker(self.config.chunker)
        self.reader = ChunkReader(self.index)
        self.stat_cache = StatCache(self.cache_dir / "stat.sqlite")
        # By repo, the bundles its refs reached when last read (Repository.visible_ids).
        # Histories only grow, so these stay visible: a bundle read by id is looked for
        # here, and the refs are read again only for an id not here.
        self.visible: dict[str, frozenset[str]] = {}

    @classmethod
    def open(
        cls,
        location: str,
        blob: str | None = None,
        options: Mapping[str, str] | None = None,
        cache: Path | None = None,
        create: bool = True,
    ) -> Store:
        """The store at ``location``; one is made there if there is none, unless not
        ``create`` (then :class:`StoreNotFound`, and nothing is made)."""
        if not create:
            for where in (location, blob):
                if where and _missing_folder(where):
                    raise StoreNotFound(where)
        meta = open_backend(location, options)
        blob_backend = open_backend(blob, options) if blob and blob != location else None
        try:
            return cls(meta, blob_backend, cache=cache, create=create)
        except ObjectNotFound:
            if create:
                raise
            raise StoreNotFound(location) from None

    @property
    def blobs_on_local_disk(self) -> bool:
        """Whether packs are read and written on this machine's disk (work for the CPU),
        not through an object store's requests (where more in flight hide latency)."""
        return self.blob.url.startswith("file:")

    @property
    def url(self) -> str:
        if self.blob is self.meta:
            return self.meta.url
        return f"{self.meta.url} (blobs: {self.blob.url})"

    def close(self) -> None:
        self.index.close()
        self.stat_cache.close()
        self.meta.close()
        if self.blob is not self.meta:
            self.blob.close()


def _missing_folder(location: str) -> bool:
    """Whether ``location`` names a local folder that does not exist (opening the local
    backend would make it)."""
    path = local_path(location)
    if path is None:
        return False
    full = os.path.expanduser(path)
    if os.path.isdir(full):
        return False
    if os.path.lexists(full):  # as a command that makes the store would fail
        raise StoreUnreachable(f"cannot open store folder {full}: not a folder")
    return True

"""Where a store is, so that a remote worker (Dask) can open the same store itself.

A :class:`~datamon.api.store.Store` does not remember the location strings and options
it was opened with, so a build that sends work to other machines carries a
:class:`StoreLocation`: captured from the configuration when the build opens the store
(or the CLI does), passed explicitly with ``build(..., location=...)``, or derived from
the store's backends when they need no options (a local folder, ``memory://``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from datamon.api.store import Store
from datamon.config import Config
from datamon.errors import InvalidArgument
from datamon.storage.url import open_backend

_LOCAL_SCHEMES = ("", "file", "memory")


@dataclass(frozen=True)
class StoreLocation:
    """The arguments of :meth:`Store.open`: metadata location, blob location, options."""

    meta: str
    blob: str | None = None
    options: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def of(
        cls, meta: str, blob: str | None = None, options: Mapping[str, str] | None = None
    ) -> StoreLocation:
        pairs = tuple(sorted((options or {}).items()))
        return cls(meta, blob if blob and blob != meta else None, pairs)

    @classmethod
    def from_config(cls, config: Config, override: str | None = None) -> StoreLocation:
        """The location the CLI opens: ``--store`` or the config file (as ``AppContext``)."""
        meta = override or config.metadata_location
        blob = override or config.blob_location
        return cls.of(meta, blob, config.store_options(meta))

    @classmethod
    def of_store(cls, store: Store) -> StoreLocation:
        """Derived from an opened store; only where no options can have been lost."""
        meta = store.meta.url
        blob = None if store.blob is store.meta else store.blob.url
        for url in (meta, blob):
            if url is not None and urlparse(url).scheme.lower() not in _LOCAL_SCHEMES:
                raise InvalidArgument(
                    f"cannot tell remote workers how to open {url} (its options are not kept): "
                    "pass location=StoreLocation.of(metadata, blob, options) to build()"
                )
            if url is not None and url.startswith("memory://"):
                backend = store.meta if url == meta else store.blob
                if open_backend(url) is not backend:
                    raise InvalidArgument(
                        f"{url} is a private memory backend that other workers cannot open; "
                        "use MemoryBackend.named() or a store folder"
                    )
        return cls(meta, blob)

    @property
    def option_map(self) -> dict[str, str]:
        return dict(self.options)

    def open(self, create: bool = True) -> Store:
        """The store; made if there is none, unless not ``create`` (``StoreNotFound``)."""
        return Store.open(self.meta, self.blob, self.option_map, create=create)


_opened: dict[StoreLocation, Store] = {}
_opened_lock = threading.Lock()


def shared_store(location: StoreLocation, create: bool = True) -> Store:
    """The store at ``location``, opened once per process and kept (for worker processes);
    made if there is none, unless not ``create`` (``StoreNotFound``)."""
    with _opened_lock:
        store = _opened.get(location)
        if store is None:
            store = _opened[location] = location.open(create)
        return store


def close_shared() -> None:
    """Close every store :func:`shared_store` opened (tests, worker teardown)."""
    with _opened_lock:
        stores = list(_opened.values())
        _opened.clear()
    for store in stores:
        store.close()

"""Which store a ``datamon://`` filesystem reads: the config's, or the one its options name.

Stores are opened once per process and shared by every filesystem instance that names the
same location (fsspec makes one instance per thread), as :class:`Store` intends.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from datamon.api.store import Store
from datamon.config import cache_dir, load_config
from datamon.core.model import Author
from datamon.errors import ConfigError, StoreNotFound

_lock = threading.Lock()
_open: dict[tuple[str, str, tuple[tuple[str, str], ...], str], Store] = {}


@dataclass(frozen=True)
class StoreSpec:
    """Where the store is: ``metadata`` and ``blob`` locations and object-store ``options``."""

    metadata: str
    blob: str
    options: Mapping[str, str] = field(default_factory=dict)
    cache: Path | None = None

    @classmethod
    def resolve(
        cls,
        store: str | None = None,
        blob: str | None = None,
        options: Mapping[str, str] | None = None,
        cache: str | Path | None = None,
    ) -> StoreSpec:
        """The given locations, else those of the config file (``DATAMON_STORE`` wins there)."""
        cache_path = Path(cache) if cache is not None else None
        if store:
            return cls(store, blob or store, dict(options or {}), cache_path)
        config = load_config()
        meta = config.metadata_location
        merged = config.store_options(meta)
        merged.update(options or {})
        return cls(meta, blob or config.blob_location, merged, cache_path)

    def open(self) -> Store:
        """The process's Store for this location, opened on first use; never creates a store."""
        options = tuple(sorted(self.options.items()))
        key = (self.metadata, self.blob, options, str(self.cache or cache_dir()))
        with _lock:
            found = _open.get(key)
            if found is not None:
                return found
            separate = self.blob != self.metadata
            blob = self.blob if separate else None
            try:
                store = Store.open(self.metadata, blob, self.options, self.cache, create=False)
            except StoreNotFound:
                raise FileNotFoundError(
                    errno.ENOENT, "no Datamon store here (create a repo first)", self.metadata
                ) from None
            _open[key] = store
            return store


def configured_author() -> Author:
    """The author of the config file; writes need one."""
    config = load_config()
    if not config.name or not config.email:
        raise ConfigError(
            "no author configured: run `datamon config create --name NAME --email EMAIL` "
            "or pass author=Author(name, email)"
        )
    return Author(config.name, config.email)

"""The store's ``config.json``: format version and chunking parameters shared by all writers."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from datamon.core.codecs import load_versioned, to_json
from datamon.core.model import FORMAT_VERSION, StoreConfig
from datamon.errors import ConditionalWritesUnsupported, ObjectNotFound, RefConflict
from datamon.metadata.layout import CONFIG, PROBE
from datamon.storage.base import Backend


def load_or_create(meta: Backend, *, create: bool = True) -> StoreConfig:
    """Read the store's config, creating the store (after probing the backend) if it is new."""
    try:
        data = meta.get(CONFIG)
    except ObjectNotFound:
        if not create:
            raise
        probe_conditional_writes(meta)
        config = StoreConfig(
            format=FORMAT_VERSION, id=os.urandom(16).hex(), created=datetime.now(UTC)
        )
        meta.put_if_absent(CONFIG, to_json(config))
        data = meta.get(CONFIG)
    return load_versioned(f"store {meta.url}", data, StoreConfig, FORMAT_VERSION, binary=False)


def probe_conditional_writes(meta: Backend) -> None:
    """Refuse a backend whose conditional writes are not honoured: refs would lose moves."""
    key = f"{PROBE}-{os.urandom(8).hex()}"
    try:
        version = meta.compare_and_swap(key, b"1", None)
        try:
            meta.compare_and_swap(key, b"2", None)
        except RefConflict:
            pass
        else:
            raise ConditionalWritesUnsupported(
                f"{meta.url} accepted a create-only write over an existing object "
                "(If-None-Match ignored); refs would lose updates, so Datamon refuses this store"
            )
        stale = "0" if version != "0" else "1"
        try:
            meta.compare_and_swap(key, b"3", stale)
        except RefConflict:
            pass
        else:
            raise ConditionalWritesUnsupported(
                f"{meta.url} accepted a write guarded by a stale version (If-Match ignored); "
                "refs would lose updates, so Datamon refuses this store"
            )
    finally:
        meta.delete(key)

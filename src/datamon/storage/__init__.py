"""Storage layer: backends that only move bytes, and wrappers around them."""

from datamon.storage.base import Backend, ObjectInfo
from datamon.storage.url import open_backend

__all__ = ["Backend", "ObjectInfo", "open_backend"]

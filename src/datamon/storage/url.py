"""Open a backend from a location string: a path, ``file://``, ``memory://``, or a bucket URL."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlparse

from datamon.errors import ConfigError
from datamon.storage.base import Backend
from datamon.storage.local import LocalBackend
from datamon.storage.memory import MemoryBackend
from datamon.storage.retry import RetryingBackend

CLOUD_SCHEMES = ("s3", "gs", "az", "abfs", "azure")


def local_path(location: str) -> str | None:
    """The folder a local ``location`` (a path, or a ``file://`` URL) names; None for others."""
    parsed = urlparse(location)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and location[1:2] == ":"):
        return unquote(parsed.path) if scheme == "file" else location
    return None


def open_backend(location: str, options: Mapping[str, str] | None = None) -> Backend:
    """The backend for ``location``; cloud backends come wrapped in retries."""
    if not location:
        raise ConfigError("empty store location")
    path = local_path(location)
    if path is not None:
        return LocalBackend(path)
    parsed = urlparse(location)
    scheme = parsed.scheme.lower()
    if scheme == "memory":
        return MemoryBackend.named((parsed.netloc + parsed.path).strip("/"))
    if scheme in CLOUD_SCHEMES:
        from datamon.storage.objectstore import ObjectStoreBackend

        return RetryingBackend(ObjectStoreBackend.from_url(location, dict(options or {})))
    raise ConfigError(
        f"unsupported store location {location!r}: use a path, file://, s3://, gs:// or az://"
    )

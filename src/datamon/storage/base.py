"""The Backend protocol: the narrow interface every store location implements.

A backend moves bytes and nothing else. Keys are ``/``-separated relative paths
without ``.`` or ``..`` segments. Versions are opaque strings that change on every
write; compare-and-swap guards a write with the version the writer last read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from datamon.errors import StorageError

Payload = bytes | bytearray | memoryview
"""What backends accept to write; packs are written from the bytearray they were built in."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str


@runtime_checkable
class Backend(Protocol):
    @property
    def url(self) -> str:
        """Where this backend stores, for messages."""
        ...

    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if absent."""
        ...

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; fewer only at the end of the object."""
        ...

    def get_range_view(self, key: str, start: int, length: int) -> memoryview:
        """The bytes :meth:`get_range` returns, as a read-only view that may borrow a
        buffer the backend reuses: valid only until the calling thread's next range read
        on this backend. For readers that consume a range at once (chunk reads), without
        copying it."""
        ...

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its current version, read together."""
        ...

    def put(self, key: str, data: Payload) -> None:
        """Write atomically, replacing any existing object."""
        ...

    def put_if_absent(self, key: str, data: Payload) -> bool:
        """Write only if ``key`` does not exist; True if this call created it."""
        ...

    def compare_and_swap(self, key: str, data: Payload, expected: str | None) -> str:
        """Write if the current version is ``expected`` (None: must not exist).

        Returns the new version; raises RefConflict otherwise.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are ignored."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (``""`` or ending in ``/``), in no set order."""
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool: ...

    def flush(self) -> None:
        """Make every write that has returned durable (a barrier before refs move)."""
        ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the backend's root."""
    if not key or key.startswith("/") or key.endswith("/"):
        raise StorageError(f"invalid storage key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", "..") or "\\" in part or "\x00" in part:
            raise StorageError(f"invalid storage key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    if prefix and not prefix.endswith("/"):
        raise StorageError(f"list prefix must end with '/': {prefix!r}")
    if prefix:
        check_key(prefix[:-1])
    return prefix

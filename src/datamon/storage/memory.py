"""MemoryBackend: a dict, for unit tests and throwaway stores."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from datamon.errors import ObjectNotFound, RefConflict
from datamon.storage.base import ObjectInfo, Payload, check_key, check_prefix

_registry: dict[str, MemoryBackend] = {}
_registry_lock = threading.Lock()


class MemoryBackend:
    def __init__(self, name: str = "") -> None:
        self._name = name
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)

    @classmethod
    def named(cls, name: str) -> MemoryBackend:
        """The process-wide backend called ``name``, so that several opens share data."""
        with _registry_lock:
            if name not in _registry:
                _registry[name] = cls(name)
            return _registry[name]

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def _entry(self, key: str) -> tuple[bytes, str]:
        try:
            return self._objects[check_key(key)]
        except KeyError:
            raise ObjectNotFound(key) from None

    def get(self, key: str) -> bytes:
        return self._entry(key)[0]

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._entry(key)[0][start : start + length]

    def get_range_view(self, key: str, start: int, length: int) -> memoryview:
        return memoryview(self._entry(key)[0])[start : start + length]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._entry(key)

    def _store(self, key: str, data: Payload) -> str:
        version = str(next(self._counter))
        self._objects[key] = (bytes(data), version)
        return version

    def put(self, key: str, data: Payload) -> None:
        check_key(key)
        with self._lock:
            self._store(key, data)

    def put_if_absent(self, key: str, data: Payload) -> bool:
        check_key(key)
        with self._lock:
            if key in self._objects:
                return False
            self._store(key, data)
            return True

    def compare_and_swap(self, key: str, data: Payload, expected: str | None) -> str:
        check_key(key)
        with self._lock:
            current = self._objects.get(key)
            actual = current[1] if current else None
            if actual != expected:
                raise RefConflict(key, expected, actual)
            return self._store(key, data)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        with self._lock:
            keys = [k for k in self._objects if k.startswith(prefix)]
        return iter(keys)

    def stat(self, key: str) -> ObjectInfo:
        data, version = self._entry(key)
        return ObjectInfo(key, len(data), version)

    def exists(self, key: str) -> bool:
        return check_key(key) in self._objects

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

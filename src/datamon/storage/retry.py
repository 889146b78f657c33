"""RetryingBackend: retries operations that failed with a transient error."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from datamon.errors import ObjectNotFound, RefConflict, TransientStorageError
from datamon.storage.base import Backend, ObjectInfo, Payload

T = TypeVar("T")
log = logging.getLogger(__name__)


class RetryingBackend:
    """Wraps a backend; only :class:`TransientStorageError` is retried, with jittered backoff."""

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    @property
    def url(self) -> str:
        return self.inner.url

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                log.warning("%s failed (%s); retry %d in %.2fs", what, exc, attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def get(self, key: str) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get_range(key, start, length))

    def get_range_view(self, key: str, start: int, length: int) -> memoryview:
        return self._call(f"get {key}", lambda: self.inner.get_range_view(key, start, length))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._call(f"get {key}", lambda: self.inner.get_versioned(key))

    def put(self, key: str, data: Payload) -> None:
        self._call(f"put {key}", lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: Payload) -> bool:
        tries = [0]

        def attempt() -> bool:
            tries[0] += 1
            return self.inner.put_if_absent(key, data)

        created = self._call(f"put {key}", attempt)
        if not created and tries[0] > 1:
            # An earlier try may have landed before its reply was lost.
            return self._holds(key, data) is not None
        return created

    def compare_and_swap(self, key: str, data: Payload, expected: str | None) -> str:
        tries = [0]

        def attempt() -> str:
            tries[0] += 1
            return self.inner.compare_and_swap(key, data, expected)

        try:
            return self._call(f"swap {key}", attempt)
        except RefConflict:
            version = self._holds(key, data) if tries[0] > 1 else None
            if version is None:
                raise
            return version

    def _holds(self, key: str, data: Payload) -> str | None:
        """The object's version if it holds exactly ``data``, else None."""
        try:
            current, version = self.get_versioned(key)
        except ObjectNotFound:
            return None
        return version if current == data else None

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(f"stat {key}", lambda: self.inner.stat(key))

    def exists(self, key: str) -> bool:
        return self._call(f"stat {key}", lambda: self.inner.exists(key))

    def flush(self) -> None:
        self._call("flush", self.inner.flush)

    def close(self) -> None:
        self.inner.close()

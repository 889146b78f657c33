"""One lock object per fingerprint, so two runs never compute the same step at once.

The lock is created by compare-and-swap (create-only); its holder refreshes a heartbeat.
A lock whose heartbeat is older than ``stale_after`` belongs to a run that died: another
run takes it over, again by compare-and-swap, so only one of several waiters wins.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from datamon.core.codecs import load_versioned, to_json
from datamon.errors import (
    CorruptObject,
    ObjectNotFound,
    PipelineError,
    RefConflict,
    UnsupportedFormat,
)
from datamon.pipeline.records import RUN_FORMAT, LockRecord
from datamon.pipeline.runstore import lock_key
from datamon.storage.base import Backend

DEFAULT_STALE_AFTER = 120.0


class Interrupted(PipelineError):
    """The run was cancelled while waiting."""


class Lease:
    """A held lock; :meth:`refresh` keeps it alive, :meth:`release` gives it up."""

    def __init__(self, meta: Backend, record: LockRecord, version: str) -> None:
        self.meta = meta
        self.record = record
        self.version = version
        self.key = lock_key(record.fingerprint)
        self.lost = False
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            if self.lost:
                return
            self.record.heartbeat = datetime.now(UTC)
            try:
                self.version = self.meta.compare_and_swap(
                    self.key, to_json(self.record), self.version
                )
            except RefConflict:
                # Another run judged us dead and took over; it will commit or reuse.
                self.lost = True

    def release(self) -> None:
        with self._lock:
            if self.lost:
                return
            try:
                _data, version = self.meta.get_versioned(self.key)
            except ObjectNotFound:
                return
            if version == self.version:
                self.meta.delete(self.key)
            self.lost = True


def _read(meta: Backend, key: str) -> tuple[LockRecord | None, str | None]:
    try:
        data, version = meta.get_versioned(key)
    except ObjectNotFound:
        return None, None
    try:
        return load_versioned(key, data, LockRecord, RUN_FORMAT, binary=False), version
    except (CorruptObject, UnsupportedFormat):
        # An unreadable lock is treated as stale rather than blocking forever.
        return None, version


def acquire(
    meta: Backend,
    fingerprint: str,
    run_id: str,
    task_id: str,
    *,
    ready: Callable[[], bool],
    cancelled: threading.Event,
    stale_after: float = DEFAULT_STALE_AFTER,
    poll: float = 0.2,
    on_wait: Callable[[LockRecord], None] | None = None,
) -> Lease | None:
    """Take the fingerprint's lock, waiting for its holder; None once ``ready()`` is true.

    ``ready`` says whether the output has meanwhile been committed (by the holder), so
    that the waiter reuses it instead of computing it again.
    """
    key = lock_key(fingerprint)
    delay = poll
    announced = False
    while True:
        now = datetime.now(UTC)
        mine = LockRecord(
            format=RUN_FORMAT,
            fingerprint=fingerprint,
            run=run_id,
            task=task_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired=now,
            heartbeat=now,
        )
        held, version = _read(meta, key)
        try:
            if version is None:
                return Lease(meta, mine, meta.compare_and_swap(key, to_json(mine), None))
            age = (now - held.heartbeat).total_seconds() if held else stale_after + 1
            if age > stale_after:
                return Lease(meta, mine, meta.compare_and_swap(key, to_json(mine), version))
        except RefConflict:
            continue
        if ready():
            return None
        if held is not None and on_wait is not None and not announced:
            on_wait(held)
            announced = True
        if cancelled.wait(delay):
            raise Interrupted(f"interrupted while waiting for the lock of {fingerprint}")
        delay = min(delay * 1.5, 2.0)


def heartbeat_interval(stale_after: float) -> float:
    return max(0.05, stale_after / 4)

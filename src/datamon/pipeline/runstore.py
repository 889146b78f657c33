"""Run objects in the store's metadata location, kept indefinitely.

::

    runs/<run id>.json                       the run record (rewritten while the run goes on)
    runs/<run id>/logs/<task id>.log         every attempt's stdout, stderr and logging
    runs/fingerprints/<fp>.json              fingerprint -> committed output (create-once)
    runs/families/<family hash>/<t>-<fp>.json  each family's fingerprints, in time order
    runs/locks/<fp>.json                     who is computing a fingerprint (CAS-created)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

from datamon.core.codecs import load_versioned, to_json
from datamon.core.ids import hexdigest
from datamon.errors import AmbiguousId, ObjectNotFound, RunNotFound
from datamon.pipeline.records import (
    RUN_FORMAT,
    FamilyEntry,
    FingerprintEntry,
    RunRecord,
)
from datamon.storage.base import Backend

PREFIX = "runs/"
FINGERPRINTS = PREFIX + "fingerprints/"
FAMILIES = PREFIX + "families/"
LOCKS = PREFIX + "locks/"
# Fingerprint entries a forced re-run replaced, kept for lineage: the bundles they name were
# still made by those steps.
REPLACED = PREFIX + "replaced/"
_RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
HISTORY_LIMIT = 50
"""How many of a family's latest fingerprints are compared to explain a re-run."""


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxxxx`` (UTC): run ids sort by start time. The last six hex
    digits are the microsecond (five) and one random digit, so that runs started in the
    same second sort too (random ones sorted them at random: ``latest`` was not the last)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{when:%Y%m%d-%H%M%S}-{when.microsecond:05x}{secrets.randbelow(16):x}"


def record_key(run_id: str) -> str:
    return f"{PREFIX}{run_id}.json"


def log_key(run_id: str, task_id: str) -> str:
    return f"{PREFIX}{run_id}/logs/{task_id}.log"


def fingerprint_key(fp: str) -> str:
    return f"{FINGERPRINTS}{fp}.json"


def lock_key(fp: str) -> str:
    return f"{LOCKS}{fp}.json"


def family_prefix(family: str) -> str:
    return f"{FAMILIES}{hexdigest(family.encode())[:32]}/"


class RunStore:
    """Reads and writes run objects through the store's metadata backend."""

    def __init__(self, meta: Backend) -> None:
        self.meta = meta

    # run records ---------------------------------------------------------------------------

    def save(self, record: RunRecord) -> None:
        self.meta.put(record_key(record.id), to_json(record))

    def load(self, run_id: str) -> RunRecord:
        key = record_key(run_id)
        try:
            data = self.meta.get(key)
        except ObjectNotFound:
            raise RunNotFound(run_id) from None
        return load_versioned(key, data, RunRecord, RUN_FORMAT, binary=False)

    def run_ids(self) -> list[str]:
        """Every recorded run, oldest first."""
        found = []
        for key in self.meta.list(PREFIX):
            name = key[len(PREFIX) :]
            if name.endswith(".json") and _RUN_ID.match(name[: -len(".json")]):
                found.append(name[: -len(".json")])
        return sorted(found)

    def resolve(self, text: str) -> str:
        """The run id named by ``text``: a full id, a unique prefix, or ``latest``."""
        ids = self.run_ids()
        if text in ("latest", "last"):
            if not ids:
                raise RunNotFound(text)
            return ids[-1]
        if text in ids:
            return text
        matches = [i for i in ids if i.startswith(text)]
        if not matches:
            raise RunNotFound(text)
        if len(matches) > 1:
            raise AmbiguousId(text, matches)
        return matches[0]

    # logs ----------------------------------------------------------------------------------

    def put_log(self, run_id: str, task_id: str, data: bytes) -> str:
        key = log_key(run_id, task_id)
        self.meta.put(key, data)
        return key

    def read_log(self, run_id: str, task_id: str, start: int = 0) -> bytes:
        """The task's log from byte ``start``; empty if there is none yet."""
        key = log_key(run_id, task_id)
        try:
            if start:
                size = self.meta.stat(key).size
                return (
                    self.meta.get_range(key, start, max(0, size - start)) if size > start else b""
                )
            return self.meta.get(key)
        except ObjectNotFound:
            return b""

    # fingerprints --------------------------------------------------------------------------

    def entries(self) -> Iterator[FingerprintEntry]:
        """Every fingerprint entry of the store, those in force and those replaced."""
        for prefix in (FINGERPRINTS, REPLACED):
            for key in self.meta.list(prefix):
                if not key.endswith(".json"):
                    continue
                try:
                    data = self.meta.get(key)
                except ObjectNotFound:  # replaced or removed since it was listed
                    continue
                yield load_versioned(key, data, FingerprintEntry, RUN_FORMAT, binary=False)

    def lookup(self, fp: str) -> FingerprintEntry | None:
        key = fingerprint_key(fp)
        try:
            data = self.meta.get(key)
        except ObjectNotFound:
            return None
        return load_versioned(key, data, FingerprintEntry, RUN_FORMAT, binary=False)

    def commit(self, entry: FingerprintEntry, replace: bool = False) -> FingerprintEntry:
        """Record ``entry``; returns the entry in force (an earlier one wins unless ``replace``;
        the one replaced is kept under :data:`REPLACED`)."""
        key = fingerprint_key(entry.fingerprint)
        data = to_json(entry)
        if replace:
            before = self.lookup(entry.fingerprint)
            if before is not None and before.output != entry.output:
                stamp = f"{before.created.astimezone(UTC):%Y%m%dT%H%M%S%f}"
                self.meta.put(f"{REPLACED}{entry.fingerprint}-{stamp}.json", to_json(before))
            self.meta.put(key, data)
        elif not self.meta.put_if_absent(key, data):
            existing = self.lookup(entry.fingerprint)
            if existing is not None:
                return existing
            self.meta.put(key, data)
        family = FamilyEntry(
            format=RUN_FORMAT,
            family=entry.manifest.family,
            fingerprint=entry.fingerprint,
            run=entry.run,
            created=entry.created,
        )
        stamp = f"{entry.created.astimezone(UTC):%Y%m%dT%H%M%S%f}"
        self.meta.put(
            f"{family_prefix(entry.manifest.family)}{stamp}-{entry.fingerprint}.json",
            to_json(family),
        )
        return entry

    def history(self, family: str, limit: int = HISTORY_LIMIT) -> list[FingerprintEntry]:
        """The family's most recently committed fingerprints, newest first."""
        keys = sorted(self.meta.list(family_prefix(family)), reverse=True)
        found: list[FingerprintEntry] = []
        seen: set[str] = set()
        for key in keys:
            fp = key.rpartition("-")[2].removesuffix(".json")
            if fp in seen:
                continue
            seen.add(fp)
            entry = self.lookup(fp)
            if entry is not None:
                found.append(entry)
            if len(found) >= limit:
                break
        return found

"""What a run leaves in the store: run records, fingerprint entries and locks (JSON)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from datamon.pipeline.fingerprint import Change, Manifest

RUN_FORMAT = 1

# decisions
REUSE = "REUSE"
RUN = "RUN"
BLOCKED = "BLOCKED"

# task statuses
PENDING = "pending"
RUNNING = "running"
REUSED = "reused"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
INTERRUPTED = "interrupted"
STATUS_BLOCKED = "blocked"
DONE_OK = (REUSED, SUCCEEDED)
TERMINAL = (REUSED, SUCCEEDED, FAILED, SKIPPED, INTERRUPTED, STATUS_BLOCKED)

STALE_RECORD = 60.0
"""A running record not saved for this long belongs to a build that probably died."""

# reason kinds
NEW = "new"
CHANGED = "changed"
UPSTREAM = "upstream"
FORCED = "forced"
REUSED_OUTPUT = "reused"
CONCURRENT = "concurrent"
MISSING_OUTPUT = "missing-output"
MISSING_INPUT = "missing-input"
PINNED = "pinned"
GROUP = "group"


class BundleRef(msgspec.Struct, kw_only=True):
    repo: str
    bundle: str
    tree: str
    label: str | None = None
    branch: str | None = None


class InputRecord(msgspec.Struct, kw_only=True):
    name: str
    task: str
    repo: str
    bundle: str
    tree: str


class Reason(msgspec.Struct, kw_only=True):
    """Why a step was reused, run or blocked.

    ``changes`` compare the step's manifest with the nearest one recorded for its family;
    ``upstream`` names the tasks whose new outputs caused a re-run.
    """

    kind: str
    text: str
    changes: list[Change] = []
    upstream: list[str] = []
    previous_run: str = ""


class AttemptRecord(msgspec.Struct, kw_only=True):
    number: int
    started: datetime
    ended: datetime | None = None
    status: str = RUNNING
    error: str = ""


class TaskRecord(msgspec.Struct, kw_only=True):
    id: str
    family: str
    kind: str
    params: dict[str, Any]
    significant: list[str]
    requires: dict[str, str]
    """Input name -> upstream task id."""
    status: str = PENDING
    decision: str = ""
    reason: Reason | None = None
    fingerprint: str = ""
    manifest: Manifest | None = None
    inputs: list[InputRecord] = []
    output: BundleRef | None = None
    output_from_run: str = ""
    """The run that computed a reused output."""
    attempts: list[AttemptRecord] = []
    started: datetime | None = None
    ended: datetime | None = None
    metrics: dict[str, Any] = {}
    log: str = ""
    error: str = ""


class Resolution(msgspec.Struct, kw_only=True):
    """A label, branch or bundle prefix resolved at plan time."""

    repo: str
    kind: str
    name: str
    bundle: str
    tree: str


class CodeVersion(msgspec.Struct, kw_only=True):
    commit: str | None = None
    dirty: bool = False
    diff: str | None = None
    """BLAKE3 of ``git diff HEAD`` when the work tree is dirty."""
    root: str | None = None


class Environment(msgspec.Struct, kw_only=True):
    python: str
    implementation: str
    platform: str
    packages: dict[str, str] = {}


class RunOptions(msgspec.Struct, kw_only=True):
    workers: int
    executor: str
    force: list[str] = []
    force_downstream: bool = False


class RunRecord(msgspec.Struct, kw_only=True):
    format: int
    id: str
    started: datetime
    status: str
    roots: list[str]
    options: RunOptions
    code: CodeVersion
    environment: Environment
    ended: datetime | None = None
    updated: datetime | None = None
    host: str = ""
    user: str = ""
    resolutions: list[Resolution] = []
    tasks: list[TaskRecord] = []
    error: str = ""

    def shown_status(self, now: datetime, stale_after: float = STALE_RECORD) -> str:
        """The status, or ``running?`` for a running record whose build stopped saving it."""
        last = self.updated or self.started
        if self.status == RUNNING and (now - last).total_seconds() > stale_after:
            return "running? (no sign of life since " + last.isoformat(timespec="seconds") + ")"
        return self.status

    def task(self, name: str) -> TaskRecord | None:
        """The task named by its id, its class name or its family, if exactly one matches."""
        exact = [t for t in self.tasks if t.id == name]
        if exact:
            return exact[0]
        matches = [t for t in self.tasks if name in (t.family, t.family.rpartition(".")[2])]
        return matches[0] if len(matches) == 1 else None


class FingerprintEntry(msgspec.Struct, kw_only=True):
    """``runs/fingerprints/<fp>.json``: the committed output of a fingerprint."""

    format: int
    fingerprint: str
    manifest: Manifest
    task: str
    run: str
    output: BundleRef
    created: datetime
    inputs: list[InputRecord] = []
    metrics: dict[str, Any] = {}


class FamilyEntry(msgspec.Struct, kw_only=True):
    """``runs/families/<family hash>/<time>-<fp>.json``: a family's fingerprints, in order."""

    format: int
    family: str
    fingerprint: str
    run: str
    created: datetime


class LockRecord(msgspec.Struct, kw_only=True):
    """``runs/locks/<fp>.json``: one run is computing the fingerprint."""

    format: int
    fingerprint: str
    run: str
    task: str
    host: str
    pid: int
    acquired: datetime
    heartbeat: datetime

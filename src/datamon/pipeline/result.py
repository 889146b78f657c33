"""What :func:`~datamon.pipeline.build` returns: each step's decision, reason and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datamon.errors import InvalidArgument
from datamon.pipeline.records import (
    BLOCKED,
    FAILED,
    RUN,
    SUCCEEDED,
    BundleRef,
    RunRecord,
    TaskRecord,
)

PLANNED = "planned"


@dataclass(frozen=True)
class StepResult:
    id: str
    family: str
    kind: str
    decision: str
    reason: str
    status: str
    fingerprint: str = ""
    output: BundleRef | None = None
    attempts: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def of(cls, task: TaskRecord) -> StepResult:
        return cls(
            id=task.id,
            family=task.family,
            kind=task.kind,
            decision=task.decision,
            reason=task.reason.text if task.reason else "",
            status=task.status,
            fingerprint=task.fingerprint,
            output=task.output,
            attempts=len(task.attempts),
            metrics=dict(task.metrics),
            error=task.error,
        )

    @property
    def name(self) -> str:
        return self.family.rpartition(".")[2]


@dataclass(frozen=True)
class BuildResult:
    """A finished build (``run_id`` names its record) or a dry run's plan (``run_id`` None)."""

    run_id: str | None
    status: str
    steps: list[StepResult]
    dry_run: bool = False

    @classmethod
    def of(cls, record: RunRecord) -> BuildResult:
        return cls(record.id, record.status, [StepResult.of(t) for t in record.tasks])

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return all(s.decision != BLOCKED for s in self.steps)
        return self.status == SUCCEEDED

    def step(self, name: str) -> StepResult:
        """The step named by its task id, class name or family (which must be unique)."""
        exact = [s for s in self.steps if s.id == name]
        found = exact or [s for s in self.steps if name in (s.name, s.family)]
        if len(found) != 1:
            raise InvalidArgument(f"{len(found)} steps match {name!r}")
        return found[0]

    def ran(self) -> list[str]:
        """Class names of the steps that were (or would be) run, in order."""
        return [s.name for s in self.steps if s.decision == RUN and s.kind == "task"]

    def reused(self) -> list[str]:
        return [s.name for s in self.steps if s.decision == "REUSE" and s.kind == "task"]

    def failed(self) -> list[str]:
        return [s.name for s in self.steps if s.status == FAILED]

    def format(self) -> str:
        """One line per step: decision, status, task id, reason; the plan of a dry run."""
        width = max([len(s.id) for s in self.steps] + [4])
        head = "plan (dry run)" if self.dry_run else f"run {self.run_id}: {self.status}"
        lines = [head]
        for s in self.steps:
            status = "" if self.dry_run else f"{s.status:<11} "
            lines.append(f"  {s.decision:<7} {status}{s.id:<{width}}  {s.reason}")
            if s.error and s.status == FAILED:
                lines.append(f"  {'':<7} {'':<11} {'':<{width}}  error: {s.error}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

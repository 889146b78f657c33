"""One attempt of one task: run it with its log captured, in a worker process or a thread.

Workers only compute: the build downloads inputs before and uploads the output after, so
a worker needs no access to the store. In a process, the task class is imported by name,
which is why tasks must be defined at module level in an importable module.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamon.pipeline import capture
from datamon.pipeline.records import FAILED, INTERRUPTED, SUCCEEDED
from datamon.pipeline.task import InputPaths, RunContext, Task


@dataclass(frozen=True)
class AttemptSpec:
    module: str
    qualname: str
    params: dict[str, Any]
    inputs: list[tuple[str, str]]
    output: str
    log: str
    run_id: str
    task_id: str
    attempt: int


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def load_task(spec: AttemptSpec) -> Task:
    """Import the task's class by module and qualified name and make the instance."""
    target: Any = importlib.import_module(spec.module)
    for part in spec.qualname.split("."):
        target = getattr(target, part)
    task = target(**spec.params)
    if not isinstance(task, Task):
        raise TypeError(f"{spec.module}.{spec.qualname} is not a datamon.pipeline.Task")
    return task


def run_in_process(spec: AttemptSpec) -> AttemptOutcome:
    """The process-pool entry point."""
    with capture.open_log(spec.log) as stream, capture.captured_process(stream):
        try:
            task = load_task(spec)
        except BaseException as exc:
            traceback.print_exc()
            return AttemptOutcome(FAILED, f"cannot load the task: {_summary(exc)}")
        return _attempt(task, spec, stream)


def run_inline(task: Task, spec: AttemptSpec) -> AttemptOutcome:
    """The inline executor's entry point: the task object itself, in the calling thread."""
    with capture.open_log(spec.log) as stream, capture.captured_thread(stream):
        return _attempt(task, spec, stream)


def _attempt(task: Task, spec: AttemptSpec, stream: Any) -> AttemptOutcome:
    log = capture.task_logger(f"datamon.task.{spec.task_id}", stream)
    ctx = RunContext(
        inputs=InputPaths([(name, Path(path)) for name, path in spec.inputs]),
        output=Path(spec.output),
        log=log,
        params=task.params,
        run_id=spec.run_id,
        task_id=spec.task_id,
        attempt=spec.attempt,
    )
    try:
        task.run(ctx)
    except KeyboardInterrupt:
        log.error("interrupted")
        return AttemptOutcome(INTERRUPTED, "interrupted", ctx.metrics)
    except BaseException as exc:
        log.error("task failed:\n%s", traceback.format_exc().rstrip())
        return AttemptOutcome(FAILED, _summary(exc), ctx.metrics)
    if not os.path.isdir(spec.output):
        message = f"run() returned without creating its output folder {spec.output}"
        log.error(message)
        return AttemptOutcome(FAILED, message, ctx.metrics)
    log.info("attempt %d succeeded", spec.attempt)
    return AttemptOutcome(SUCCEEDED, "", ctx.metrics)


def _summary(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

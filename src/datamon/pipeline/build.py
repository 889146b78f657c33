"""``build()``: plan the DAG, then run what must run, reusing every committed fingerprint.

Store I/O (downloads, uploads, records, locks) happens in the build's step threads; only
``run(ctx)`` happens in a worker (a spawned process, or the step thread itself with the
inline executor). Independent steps run at once, up to ``workers``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from datamon.api.store import Store
from datamon.config import load_config
from datamon.core.model import Author
from datamon.errors import InvalidArgument, ParameterError, StoreNotFound, TaskDefinitionError
from datamon.pipeline import capture
from datamon.pipeline.code import CodeHasher
from datamon.pipeline.environment import code_version, environment
from datamon.pipeline.executor import StepRunner
from datamon.pipeline.graph import EXTERNAL, TASK, WRAPPER, Graph, build_graph
from datamon.pipeline.location import StoreLocation
from datamon.pipeline.locks import DEFAULT_STALE_AFTER
from datamon.pipeline.params import json_value
from datamon.pipeline.planner import Decision, Planner, Resolved, blocked_by
from datamon.pipeline.records import (
    BLOCKED,
    DONE_OK,
    FAILED,
    GROUP,
    INTERRUPTED,
    MISSING_INPUT,
    REUSE,
    REUSED,
    RUN,
    RUN_FORMAT,
    RUNNING,
    SKIPPED,
    STATUS_BLOCKED,
    SUCCEEDED,
    TERMINAL,
    Reason,
    RunOptions,
    RunRecord,
    TaskRecord,
)
from datamon.pipeline.result import BuildResult, StepResult
from datamon.pipeline.runstore import RunStore, new_run_id
from datamon.pipeline.task import Task
from datamon.storage.memory import MemoryBackend

EXECUTORS = ("process", "inline", "dask")


@dataclass(frozen=True)
class BuildOptions:
    """How to build. ``executor`` is ``process`` (a spawned process pool), ``inline``
    (tasks run in the build's threads: no import needed, but a running task cannot be
    stopped and only WARNING-and-up logging of other loggers is captured) or ``dask``
    (attempts run on the Dask cluster at ``scheduler``, whose workers open the store at
    ``location`` and download and upload bundles themselves)."""

    workers: int = 1
    executor: str = "process"
    dry_run: bool = False
    force: tuple[object, ...] = ()
    force_downstream: bool = False
    author: Author | None = None
    work_dir: str | None = None
    keep_work: bool = False
    lock_stale_after: float = DEFAULT_STALE_AFTER
    log_interval: float = 1.0
    on_step: Callable[[StepResult], None] | None = None
    scheduler: str | None = None
    location: StoreLocation | None = None


def build(
    tasks: Iterable[Task],
    *,
    store: Store | None = None,
    workers: int = 1,
    executor: str = "process",
    dry_run: bool = False,
    force: Sequence[object] = (),
    force_downstream: bool = False,
    options: BuildOptions | None = None,
    scheduler: str | None = None,
    location: StoreLocation | None = None,
) -> BuildResult:
    """Build ``tasks`` and everything they require; returns each step's outcome.

    ``force`` names steps to run even if their output exists (a task, a task class, or a
    task id, class name or family); ``force_downstream`` also runs everything below them.
    With ``dry_run`` nothing runs and the result is the plan. Without ``store`` the
    configured store is used. Ctrl-C marks the run interrupted and re-raises.

    ``executor="dask"`` sends attempts to the Dask scheduler at ``scheduler``
    (``tcp://host:8786``); its workers open the store themselves at ``location``, which
    defaults to where the configured store is, or is derived from ``store`` when that is
    a local folder (a store opened with options needs ``location`` passed explicitly).
    """
    base = options or BuildOptions()
    chosen = replace(
        base,
        workers=workers,
        executor=executor,
        dry_run=dry_run,
        force=tuple(force),
        force_downstream=force_downstream,
        scheduler=scheduler or base.scheduler,
        location=location or base.location,
    )
    if store is not None:
        if chosen.executor == "dask" and chosen.location is None and not dry_run:
            chosen = replace(chosen, location=StoreLocation.of_store(store))
        return Builder(store, list(tasks), chosen).run()
    where = chosen.location or StoreLocation.from_config(load_config())
    with _opened(where, chosen.dry_run) as opened:
        return Builder(opened, list(tasks), replace(chosen, location=where)).run()


@contextmanager
def _opened(where: StoreLocation, dry_run: bool) -> Iterator[Store]:
    """The store at ``where``, made if there is none; but a plan writes nothing, so a dry
    run with no store there is planned against an empty one in memory (every step of a
    first build runs)."""
    try:
        store = where.open(create=not dry_run)
    except StoreNotFound:
        if not dry_run:
            raise
        with tempfile.TemporaryDirectory(prefix="datamon-plan-") as cache:
            store = Store(MemoryBackend(), cache=Path(cache))
            try:
                yield store
            finally:
                store.close()
        return
    try:
        yield store
    finally:
        store.close()


def default_author() -> Author:
    config = load_config()
    if config.name and config.email:
        return Author(config.name, config.email)
    user = getpass.getuser()
    return Author(user, f"{user}@{socket.gethostname()}")


class Builder:
    def __init__(self, store: Store, tasks: list[Task], options: BuildOptions) -> None:
        if options.executor not in EXECUTORS:
            raise InvalidArgument(
                f"unknown executor {options.executor!r}; use {' or '.join(EXECUTORS)}"
            )
        if options.workers < 1:
            raise InvalidArgument("workers must be at least 1")
        self.store = store
        self.options = options
        self.runs = RunStore(store.meta)
        self.graph = build_graph(tasks)
        if not self.graph.roots:
            raise InvalidArgument("build() was given no task")
        _check_params(self.graph)
        if options.executor == "dask" and not options.dry_run and not options.scheduler:
            raise InvalidArgument("the dask executor needs a scheduler address (tcp://...)")
        if options.executor in ("process", "dask") and not options.dry_run:
            _check_importable(self.graph)
        self.forced = _forced(self.graph, options.force, options.force_downstream)
        self.planner = Planner(store, self.graph, self.runs, self.forced, CodeHasher())

    def run(self) -> BuildResult:
        self.planner.hash_code()
        resolved = self.planner.resolve_externals()
        if self.options.dry_run:
            decisions = self.planner.plan(resolved)
            steps = []
            for nid, d in decisions.items():
                node = self.graph.nodes[nid]
                steps.append(
                    StepResult(
                        id=nid,
                        family=node.family,
                        kind=node.kind,
                        decision=d.decision,
                        reason=d.reason.text,
                        status="planned",
                        fingerprint=d.fingerprint,
                        output=d.output,
                    )
                )
            blocked = any(s.decision == BLOCKED for s in steps)
            return BuildResult(None, "blocked" if blocked else "planned", steps, dry_run=True)
        record = self._new_record(resolved)
        execution = Execution(self, record, resolved)
        return execution.run()

    def _new_record(self, resolved: dict[str, Resolved]) -> RunRecord:
        run_id = new_run_id()
        first = self.graph.nodes[self.graph.roots[0]].task
        module = sys.modules.get(type(first).__module__)
        folder = os.path.dirname(os.path.abspath(getattr(module, "__file__", None) or "."))
        tasks = []
        for node in self.graph.nodes.values():
            params = node.task.params
            tasks.append(
                TaskRecord(
                    id=node.id,
                    family=node.family,
                    kind=node.kind,
                    params=params,
                    significant=sorted(node.task.significant_params),
                    requires=dict(node.inputs),
                )
            )
        resolutions = [r.resolution for r in resolved.values() if r.resolution is not None]
        return RunRecord(
            format=RUN_FORMAT,
            id=run_id,
            started=datetime.now(UTC),
            status=RUNNING,
            roots=list(self.graph.roots),
            options=RunOptions(
                workers=self.options.workers,
                executor=self.options.executor,
                force=sorted(self.forced),
                force_downstream=self.options.force_downstream,
            ),
            code=code_version(folder),
            environment=environment(),
            host=socket.gethostname(),
            user=getpass.getuser(),
            resolutions=resolutions,
            tasks=tasks,
        )


class Execution:
    """One run of a plan: schedules steps, records every change, handles Ctrl-C."""

    def __init__(self, builder: Builder, record: RunRecord, resolved: dict[str, Resolved]) -> None:
        self.builder = builder
        self.graph: Graph = builder.graph
        self.record = record
        self.resolved = resolved
        self.tasks = {t.id: t for t in record.tasks}
        self.lock = threading.RLock()
        self.closed = False
        self.cancelled = threading.Event()
        options = builder.options
        self.work = Path(options.work_dir or tempfile.mkdtemp(prefix=f"datamon-run-{record.id}-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.steps = StepRunner(self, options.author or default_author())

    # recording -----------------------------------------------------------------------------

    def save(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.record.updated = datetime.now(UTC)
            self.builder.runs.save(self.record)

    def finish_task(self, task: TaskRecord) -> None:
        """Record a step that reached its final status, and tell the caller."""
        with self.lock:
            if self.closed:
                return
            task.ended = task.ended or datetime.now(UTC)
            self.save()
            callback = self.builder.options.on_step
        if callback is not None:
            callback(StepResult.of(task))

    # scheduling ----------------------------------------------------------------------------

    def run(self) -> BuildResult:
        self.save()
        threads = ThreadPoolExecutor(self.builder.options.workers, "datamon-step")
        pending = list(self.graph.nodes)
        running: dict[Future[None], str] = {}
        interrupted = False
        routing = (
            capture.thread_routing() if self.builder.options.executor == "inline" else _nothing()
        )
        try:
            with routing, self.steps.monitor(), _terminate_interrupts():
                while pending or running:
                    for nid in list(pending):
                        if self._ready(nid):
                            pending.remove(nid)
                            future = self._start(nid, threads)
                            if future is not None:
                                running[future] = nid
                    if not running:
                        if pending:
                            raise AssertionError(f"steps can never start: {pending}")
                        continue
                    done, _ = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
                    for future in done:
                        nid = running.pop(future)
                        error = future.exception()
                        if error is not None:
                            self.steps.internal_failure(nid, error)
        except KeyboardInterrupt:
            interrupted = True
            self._interrupt(pending, running)
            raise
        finally:
            threads.shutdown(wait=not interrupted, cancel_futures=True)
            self.steps.close()
            if not self.builder.options.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        self._finish()
        return BuildResult.of(self.record)

    def _ready(self, nid: str) -> bool:
        return all(self.tasks[up].status in TERMINAL for _n, up in self.graph.nodes[nid].inputs)

    def _start(self, nid: str, threads: ThreadPoolExecutor) -> Future[None] | None:
        node = self.graph.nodes[nid]
        task = self.tasks[nid]
        ups = [(name, up) for name, up in node.inputs]
        bad = [(name, up) for name, up in ups if self.tasks[up].status not in DONE_OK]
        if bad:
            self._not_started(task, bad)
            return None
        if node.kind == EXTERNAL:
            resolved = self.resolved[nid]
            decision = self.builder.planner.external(node, resolved)
            task.decision = decision.decision
            task.reason = decision.reason
            task.output = decision.output
            task.status = REUSED if decision.decision == REUSE else STATUS_BLOCKED
            self.finish_task(task)
            return None
        if node.kind == WRAPPER:
            ran = [up for _n, up in ups if self.tasks[up].decision == RUN]
            task.decision = RUN if ran else REUSE
            text = f"groups {len(ups)} tasks" + (f", {len(ran)} ran" if ran else "")
            task.reason = Reason(kind=GROUP, text=text, upstream=ran)
            task.status = SUCCEEDED
            self.finish_task(task)
            return None
        return threads.submit(self.steps.step, nid)

    def _not_started(self, task: TaskRecord, bad: list[tuple[str, str]]) -> None:
        blocked = [(n, u) for n, u in bad if self.tasks[u].status == STATUS_BLOCKED]
        if blocked and len(blocked) == len(bad):
            decisions = {u: _as_decision(self.tasks[u]) for _n, u in blocked}
            found = blocked_by(blocked, decisions)
            task.decision, task.reason, task.status = BLOCKED, found.reason, STATUS_BLOCKED
        else:
            parts = [f"input {n} ({u}) {self.tasks[u].status}" for n, u in bad]
            task.decision = BLOCKED
            task.reason = Reason(
                kind=MISSING_INPUT, text="; ".join(parts), upstream=[u for _n, u in bad]
            )
            task.status = SKIPPED
        self.finish_task(task)

    def _interrupt(self, pending: list[str], running: dict[Future[None], str]) -> None:
        self.cancelled.set()
        self.steps.stop_workers()
        wait(running, timeout=10.0)
        with self.lock:
            for nid in pending:
                task = self.tasks[nid]
                task.status = SKIPPED
                task.reason = task.reason or Reason(
                    kind=INTERRUPTED, text="the run was interrupted"
                )
            for task in self.record.tasks:
                if task.status not in TERMINAL:
                    task.status = INTERRUPTED
            self.record.status = INTERRUPTED
            self.record.ended = datetime.now(UTC)
            self.save()
            self.closed = True

    def _finish(self) -> None:
        with self.lock:
            statuses = {t.status for t in self.record.tasks}
            if FAILED in statuses or INTERRUPTED in statuses:
                status = FAILED if FAILED in statuses else INTERRUPTED
            elif statuses & {STATUS_BLOCKED, SKIPPED}:
                status = STATUS_BLOCKED
            else:
                status = SUCCEEDED
            self.record.status = status
            self.record.ended = datetime.now(UTC)
            self.save()
            self.closed = True


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _as_decision(task: TaskRecord) -> Decision:
    assert task.reason is not None
    return Decision(task.decision, task.reason)


def _check_params(graph: Graph) -> None:
    for node in graph.nodes.values():
        for name, value in node.task.params.items():
            try:
                json_value(value)
            except InvalidArgument as exc:
                raise ParameterError(node.family, name, str(exc)) from None


def _check_importable(graph: Graph) -> None:
    for node in graph.nodes.values():
        if node.kind != TASK:
            continue
        cls = type(node.task)
        if "<locals>" in cls.__qualname__:
            raise TaskDefinitionError(
                f"{node.family} is defined inside a function; the process executor imports "
                "tasks by name, so define it at module level (or use executor='inline')"
            )


def _forced(graph: Graph, selectors: Sequence[object], downstream: bool) -> dict[str, str]:
    forced: dict[str, str] = {}
    for selector in selectors:
        matches = graph.select(selector)
        if not matches:
            raise InvalidArgument(f"--force {selector}: no such task in this build")
        for nid in matches:
            forced[nid] = "forced"
    if downstream:
        for nid in list(forced):
            for below in graph.downstream_closure([nid]):
                forced.setdefault(below, f"forced: downstream of {nid}")
    return {nid: why for nid, why in forced.items() if graph.nodes[nid].kind == TASK}


@contextmanager
def _terminate_interrupts() -> Iterator[None]:
    """SIGTERM (how Kubernetes, systemd and ``kill`` stop a process) ends a build as Ctrl-C
    does: its steps' worker processes are stopped and its record says ``interrupted``.
    Only a build on the main thread can take the signal; another keeps the handler it has."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)

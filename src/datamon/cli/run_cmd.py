"""``datamon run``: start pipelines, and list, show, diff and read the logs of their runs.

The pipeline package loads only when a ``run`` command runs, so ``datamon --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click
import msgspec

from datamon.cli.context import AppContext, pass_app
from datamon.cli.options import json_option
from datamon.cli.output import emit_json, lines, timestamp
from datamon.core.model import Author
from datamon.errors import InvalidArgument, ParameterError, StoreNotFound

if TYPE_CHECKING:
    from datamon.api.store import Store
    from datamon.pipeline import StepResult, Task
    from datamon.pipeline.records import RunRecord, TaskRecord
    from datamon.pipeline.runstore import RunStore

FOLLOW_POLL = 0.5


@click.group("run")
def run_group() -> None:
    """Start pipelines and inspect their runs: what ran, why, with which data and code.

    \b
    Example:
      datamon run start mypipeline:Evaluate --param C=0.5 --workers 2
      datamon run list
      datamon run show latest
      datamon run logs latest Train
      datamon run diff 20250101-120000-a1b2c3 latest
    """


def _runs(app: AppContext) -> RunStore:
    from datamon.pipeline.runstore import RunStore

    return RunStore(app.store.meta)


def _load_task_class(target: str) -> type[Task]:
    from datamon.pipeline import Task

    module_name, sep, name = target.partition(":")
    if not sep:
        module_name, _dot, name = target.rpartition(".")
    if not module_name or not name:
        raise click.UsageError(f"name the task as module:Class, not {target!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the module's own code failed (or does not compile)
        where = f"{exc.filename}:{exc.lineno}: " if isinstance(exc, SyntaxError) else ""
        reason = f"{where}{type(exc).__name__}: {exc}"
        raise click.ClickException(f"cannot import {module_name}: {reason}") from None
    found: Any = module
    for part in name.split("."):
        found = getattr(found, part, None)
    if found is None:
        from datamon.pipeline.chains import defined_tasks

        tasks = sorted(defined_tasks(module))
        known = f" (its tasks: {', '.join(tasks)})" if tasks else " (it defines no task)"
        raise click.UsageError(f"{module_name} has no {name}{known}")
    if not (isinstance(found, type) and issubclass(found, Task)):
        raise click.UsageError(f"{target} is not a datamon.pipeline.Task")
    return found


def _parse_params(cls: type[Task], pairs: tuple[str, ...]) -> dict[str, Any]:
    declared = cls.parameters()
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise click.UsageError(f"--param takes NAME=VALUE, not {pair!r}")
        name = name.strip().replace("-", "_")
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise click.UsageError(f"{cls.__name__} has no parameter {name!r} (it has: {known})")
        try:
            values[name] = declared[name].parse(text)
        except InvalidArgument as exc:
            raise ParameterError(cls.family(), name, str(exc)) from None
    return values


def _author(app: AppContext) -> Author:
    config = app.config
    if config.name and config.email:
        return Author(config.name, config.email)
    from datamon.pipeline.build import default_author

    return default_author()


def _step_line(step: StepResult) -> None:
    click.echo(f"{step.decision:<7} {step.status:<11} {step.id}  {step.reason}")
    if step.error:
        click.echo(f"{'':<7} {'':<11} {step.id}  error: {step.error}")


F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BuildFlags:
    """The command-line options of a build, handed to the command as one ``flags`` value."""

    workers: int
    executor: str
    scheduler: str | None
    dry_run: bool
    force: tuple[str, ...]
    force_downstream: bool


def build_options(f: F) -> F:
    """The options of a build: workers, executor, scheduler, dry run and forcing."""
    options = [
        click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True),
        click.option(
            "--executor",
            type=click.Choice(["process", "inline", "dask"]),
            default="process",
            show_default=True,
            help="A pool of spawned processes, the build's own threads, or a Dask cluster.",
        ),
        click.option(
            "--scheduler",
            metavar="ADDRESS",
            envvar="DATAMON_DASK_SCHEDULER",
            default=None,
            help="The Dask scheduler (tcp://host:8786) for --executor dask.",
        ),
        click.option(
            "--dry-run", is_flag=True, help="Print the plan (REUSE / RUN / BLOCKED, and why)."
        ),
        click.option("--force", multiple=True, metavar="TASK", help="Run this task even if done."),
        click.option("--force-downstream", is_flag=True, help="Also run everything below --force."),
    ]

    @functools.wraps(f)
    def gather(
        *args: Any,
        workers: int,
        executor: str,
        scheduler: str | None,
        dry_run: bool,
        force: tuple[str, ...],
        force_downstream: bool,
        **kwargs: Any,
    ) -> Any:
        flags = BuildFlags(workers, executor, scheduler, dry_run, force, force_downstream)
        return f(*args, flags=flags, **kwargs)

    wrapped: Any = gather
    for option in reversed(options):
        wrapped = option(wrapped)
    return cast(F, wrapped)


@run_group.command("start")
@click.argument("target")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="A task parameter.")
@build_options
@json_option
@pass_app
def start(
    app: AppContext, target: str, params: tuple[str, ...], flags: BuildFlags, as_json: bool
) -> None:
    """Build TARGET (module:TaskClass) and what it requires; reuse every step already done.

    \b
    Example:
      datamon run start mlpipe.tasks:Evaluate --param C=0.5 --workers 2
      datamon run start mlpipe.tasks:Evaluate --dry-run
      datamon run start mlpipe.tasks:Evaluate --force Clean --force-downstream
      datamon run start mlpipe.tasks:Evaluate --executor dask --scheduler tcp://10.0.0.5:8786
    """
    cls = _load_task_class(target)
    task = cls(**_parse_params(cls, params))
    build_and_report(app, task, flags, as_json)


def build_and_report(app: AppContext, task: Task, flags: BuildFlags, as_json: bool) -> None:
    """Build ``task`` and print the steps and the outcome (``run start``, ``chain run``)."""
    from datamon.pipeline import BuildOptions, build
    from datamon.pipeline.location import StoreLocation

    dry_run = flags.dry_run
    # A build makes its output repos, in a new store too; a dry run writes nothing, and
    # with no store plans against an empty one (pipeline.build).
    app.may_create = not dry_run
    try:
        store: Store | None = app.store
    except StoreNotFound:
        if not dry_run:
            raise
        store = None
    if flags.executor == "dask" and not flags.scheduler and not dry_run:
        raise click.UsageError("--executor dask needs --scheduler tcp://HOST:PORT")
    options = BuildOptions(
        author=_author(app), on_step=None if (as_json or dry_run) else _step_line
    )
    result = build(
        [task],
        store=store,
        workers=flags.workers,
        executor=flags.executor,
        dry_run=dry_run,
        force=flags.force,
        force_downstream=flags.force_downstream,
        options=options,
        scheduler=flags.scheduler,
        # Dask workers open the store themselves, exactly as this command did.
        location=StoreLocation.from_config(app.config, app.store_override),
    )
    if as_json:
        emit_json(result)
    elif dry_run:
        click.echo(result.format())
    else:
        click.echo(f"run {result.run_id}: {result.status}")
    if not result.ok:
        what = "the plan has blocked steps" if dry_run else f"run {result.run_id} {result.status}"
        raise click.ClickException(what)


def _row(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "started": record.started.isoformat(),
        "ended": record.ended.isoformat() if record.ended else None,
        "status": record.shown_status(datetime.now(UTC)),
        "roots": record.roots,
        "tasks": len(record.tasks),
        "ran": sum(t.decision == "RUN" and t.kind == "task" for t in record.tasks),
    }


@run_group.command("list")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the latest N runs.")
@json_option
@pass_app
def list_(app: AppContext, limit: int | None, as_json: bool) -> None:
    """List runs, oldest first: run id , start time , status , root tasks.

    \b
    Example:
      datamon run list --limit 10
    """
    runs = _runs(app)
    ids = runs.run_ids()
    if limit:
        ids = ids[-limit:]
    records = [runs.load(i) for i in ids]
    now = datetime.now(UTC)
    if as_json:
        emit_json([_row(r) for r in records])
        return
    lines((r.id, timestamp(r.started), r.shown_status(now), " ".join(r.roots)) for r in records)


@run_group.command("show")
@click.argument("run")
@json_option
@pass_app
def show(app: AppContext, run: str, as_json: bool) -> None:
    """Show a run: code, environment, label resolutions, and each task's decision and why.

    RUN is a run id, a unique prefix of one, or `latest`.

    \b
    Example:
      datamon run show latest
    """
    runs = _runs(app)
    record = runs.load(runs.resolve(run))
    if as_json:
        emit_json(msgspec.to_builtins(record))
        return
    click.echo(f"run {record.id}: {record.shown_status(datetime.now(UTC))}")
    ended = timestamp(record.ended) if record.ended else "-"
    click.echo(f"started {timestamp(record.started)} , ended {ended}")
    code = record.code
    if code.commit:
        dirty = f" (dirty, diff {code.diff[:12]})" if code.dirty and code.diff else ""
        click.echo(f"code: git {code.commit}{dirty}")
    else:
        click.echo("code: not in a git work tree")
    env = record.environment
    click.echo(f"environment: python {env.python} on {env.platform}, {len(env.packages)} packages")
    opts = record.options
    click.echo(f"executor: {opts.executor} , workers {opts.workers}")
    for r in record.resolutions:
        click.echo(f"resolved: {r.repo} {r.kind} {r.name} -> bundle {r.bundle}")
    for t in record.tasks:
        click.echo(f"task {t.id} [{t.family}]: {t.decision or '-'} , {t.status}")
        if t.params:
            params = " ".join(f"{k}={msgspec.json.encode(v).decode()}" for k, v in t.params.items())
            click.echo(f"  params: {params}")
        if t.reason is not None:
            click.echo(f"  why: {t.reason.text}")
        for i in t.inputs:
            click.echo(f"  input {i.name}: {i.repo}@{i.bundle} (from {i.task})")
        if t.output is not None:
            origin = f" (from run {t.output_from_run})" if t.output_from_run else ""
            click.echo(f"  output: {t.output.repo}@{t.output.bundle}{origin}")
        if t.fingerprint:
            click.echo(f"  fingerprint: {t.fingerprint}")
        if t.attempts:
            parts = []
            for a in t.attempts:
                took = f" {(a.ended - a.started).total_seconds():.2f}s" if a.ended else ""
                parts.append(f"#{a.number} {a.status}{took}")
            click.echo(f"  attempts: {' , '.join(parts)}")
        if t.metrics:
            metrics = " ".join(
                f"{k}={msgspec.json.encode(v).decode()}" for k, v in t.metrics.items()
            )
            click.echo(f"  metrics: {metrics}")
        if t.error:
            click.echo(f"  error: {t.error}")


def _pick_task(record: RunRecord, name: str) -> TaskRecord:
    found = record.task(name)
    if found is None:
        ids = ", ".join(t.id for t in record.tasks)
        raise InvalidArgument(f"no single task {name!r} in run {record.id} (tasks: {ids})")
    return found


@run_group.command("logs")
@click.argument("run")
@click.argument("task", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the run ends.")
@pass_app
def logs(app: AppContext, run: str, task: str | None, follow: bool) -> None:
    """Print the captured stdout, stderr and logging of a run's tasks (every attempt).

    TASK is a task id, class name or family; without it every task's log is printed.

    \b
    Example:
      datamon run logs latest Train
      datamon run logs latest --follow
    """
    from datamon.pipeline.records import RUNNING

    runs = _runs(app)
    run_id = runs.resolve(run)
    record = runs.load(run_id)
    chosen = [_pick_task(record, task).id] if task else [t.id for t in record.tasks]
    offsets = dict.fromkeys(chosen, 0)
    prefix = follow and len(chosen) > 1
    while True:
        for tid in chosen:
            data = runs.read_log(run_id, tid, offsets[tid])
            if not data:
                continue
            offsets[tid] += len(data)
            text = data.decode("utf-8", errors="replace")
            if prefix:
                for piece in text.splitlines():
                    click.echo(f"[{tid}] {piece}")
            elif follow:
                click.echo(text, nl=False)
            else:
                if len(chosen) > 1:
                    click.echo(f"##### {tid}")
                click.echo(text, nl=not text.endswith("\n"))
        if not follow:
            if not any(offsets.values()):
                ran = any(t.attempts for t in record.tasks if t.id in offsets)
                if ran:
                    what = "nothing was printed"
                elif task:
                    what = f"{task} did not run in it (reused, blocked or skipped)"
                else:
                    what = "no step ran in it (reused, blocked or skipped)"
                click.echo(f"run {run_id}: no logs: {what}", err=True)
            return
        if record.status != RUNNING and all(_finished(record, t) for t in chosen):
            return
        shown = record.shown_status(datetime.now(UTC))
        if shown != record.status:  # its build stopped saving it: it will not go on
            click.echo(f"run {run_id}: {shown}", err=True)
            return
        time.sleep(FOLLOW_POLL)
        record = runs.load(run_id)


def _finished(record: RunRecord, task_id: str) -> bool:
    from datamon.pipeline.records import TERMINAL

    found = record.task(task_id)
    return found is None or found.status in TERMINAL


@run_group.command("diff")
@click.argument("old")
@click.argument("new")
@json_option
@pass_app
def diff(app: AppContext, old: str, new: str, as_json: bool) -> None:
    """Compare two runs: DAG, code, environment, parameters, data, and why each task ran.

    \b
    Example:
      datamon run diff 20250101-120000-a1b2c3 latest
    """
    from datamon.pipeline.rundiff import diff_runs, format_diff

    runs = _runs(app)
    a = runs.load(runs.resolve(old))
    b = runs.load(runs.resolve(new))
    found = diff_runs(a, b, app.store)
    if as_json:
        emit_json(found)
        return
    for text in format_diff(found):
        click.echo(text)

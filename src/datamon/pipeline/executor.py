"""Running one step: lock its fingerprint, download inputs, run attempts, commit the output.

Each attempt writes to a fresh staging folder; the output becomes a bundle (with
``params.json`` and ``params.txt`` added, every mtime set to :data:`SOURCE_EPOCH` so equal
files give an equal tree id) only when ``run`` returned and created the folder. The
fingerprint entry is committed after the bundle, so a crash never points at nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from datamon.api.repository import Repository
from datamon.api.store import Store
from datamon.api.upload import UploadOptions
from datamon.core.codecs import to_json
from datamon.core.model import Author
from datamon.errors import DatamonError, RepoExists, RepoNotFound, TaskDefinitionError
from datamon.pipeline.code import module_name
from datamon.pipeline.graph import Node
from datamon.pipeline.locks import Interrupted, Lease, acquire, heartbeat_interval
from datamon.pipeline.planner import Decision
from datamon.pipeline.records import (
    CONCURRENT,
    FAILED,
    INTERRUPTED,
    REUSE,
    REUSED,
    RUN,
    RUN_FORMAT,
    RUNNING,
    SUCCEEDED,
    AttemptRecord,
    BundleRef,
    FingerprintEntry,
    InputRecord,
    Reason,
    TaskRecord,
)
from datamon.pipeline.runstore import log_key
from datamon.pipeline.task import BundleOutput
from datamon.pipeline.worker import AttemptOutcome, AttemptSpec, run_in_process, run_inline

if TYPE_CHECKING:
    from datamon.pipeline.build import Execution
    from datamon.pipeline.daskexec import DaskPool

SOURCE_EPOCH = 315532800
"""1980-01-01T00:00:00Z, the mtime of every file of an output bundle (as in zip files)."""
RECORD_HEARTBEAT = 10.0
"""Seconds between saves of a running record, whose ``updated`` then shows the build lives."""
PARAMS_JSON = "params.json"
PARAMS_TXT = "params.txt"


class StepRunner:
    def __init__(self, execution: Execution, author: Author) -> None:
        self.execution = execution
        self.builder = execution.builder
        self.store = execution.builder.store
        self.author = author
        self._pool: ProcessPoolExecutor | None = None
        self._dask: DaskPool | None = None
        self._pool_lock = threading.Lock()
        self._leases: set[Lease] = set()
        self._live: dict[str, list[Path]] = {}
        self._shipped: dict[str, int] = {}
        self._state = threading.Lock()

    # the step ------------------------------------------------------------------------------

    def step(self, nid: str) -> None:
        execution = self.execution
        node = execution.graph.nodes[nid]
        task = execution.tasks[nid]
        inputs = [_input(name, up, execution.tasks[up].output) for name, up in node.inputs]
        planner = self.builder.planner
        decision = planner.decide(node, inputs)
        if decision.decision != RUN:
            assert decision.entry is not None
            self._reuse(node, task, decision, decision.entry)
            return
        forced = nid in self.builder.forced
        fp = decision.fingerprint

        def ready() -> bool:
            return not forced and planner.valid_entry(fp) is not None

        def waiting(held: Any) -> None:
            self._note(nid, f"waiting for run {held.run}, which is computing this step")

        try:
            lease = acquire(
                self.store.meta,
                fp,
                execution.record.id,
                nid,
                ready=ready,
                cancelled=execution.cancelled,
                stale_after=self.builder.options.lock_stale_after,
                on_wait=waiting,
            )
        except Interrupted:
            self._set(task, status=INTERRUPTED)
            execution.finish_task(task)
            return
        if lease is None:
            self._reuse_concurrent(node, task, decision)
            return
        with self._state:
            self._leases.add(lease)
        try:
            if ready():
                self._reuse_concurrent(node, task, decision)
                return
            self._compute(node, task, decision)
        finally:
            lease.release()
            with self._state:
                self._leases.discard(lease)

    def _reuse_concurrent(self, node: Node, task: TaskRecord, decision: Decision) -> None:
        entry = self.builder.planner.valid_entry(decision.fingerprint)
        assert entry is not None
        decision.reason = Reason(
            kind=CONCURRENT,
            text=f"computed meanwhile by run {entry.run}",
            previous_run=entry.run,
        )
        decision.decision = REUSE
        self._reuse(node, task, decision, entry)

    def _reuse(
        self, node: Node, task: TaskRecord, decision: Decision, entry: FingerprintEntry
    ) -> None:
        assert isinstance(node.output, BundleOutput)
        label = node.output.label
        if label is not None:
            repo = Repository(self.store, entry.output.repo)
            current = self.store.refs.read(repo.name, "label", label)
            if current is None or current[0].bundle != entry.output.bundle:
                repo.set_label(label, entry.output.bundle, self.author)
        output = BundleRef(
            repo=entry.output.repo,
            bundle=entry.output.bundle,
            tree=entry.output.tree,
            label=label,
            branch=node.output.branch,
        )
        self._set(
            task,
            decision=REUSE,
            reason=decision.reason,
            fingerprint=decision.fingerprint,
            manifest=decision.manifest,
            inputs=decision.inputs,
            output=output,
            output_from_run=entry.run,
            metrics=dict(entry.metrics),
            status=REUSED,
        )
        self.execution.finish_task(task)

    def _compute(self, node: Node, task: TaskRecord, decision: Decision) -> None:
        execution = self.execution
        self._set(
            task,
            decision=RUN,
            reason=decision.reason,
            fingerprint=decision.fingerprint,
            manifest=decision.manifest,
            inputs=decision.inputs,
            status=RUNNING,
            started=datetime.now(UTC),
            log=log_key(execution.record.id, node.id),
        )
        execution.save()
        folder = execution.work / node.id
        remote = self.builder.options.executor == "dask"
        local = [] if remote else self._download(folder / "inputs", decision.inputs)
        attempts = 1 + max(0, int(node.task.retry_count))
        for number in range(1, attempts + 1):
            if execution.cancelled.is_set():
                self._end(task, INTERRUPTED, "interrupted")
                return
            if number > 1 and not remote:
                self._refresh_inputs(local, decision.inputs)
            staging = folder / f"attempt-{number}"
            staging.mkdir(parents=True, exist_ok=True)
            log = folder / f"attempt-{number}.log"
            log.touch()
            attempt = AttemptRecord(number=number, started=datetime.now(UTC))
            with self._state:
                self._live.setdefault(node.id, []).append(log)
            self._set(task, attempts=[*task.attempts, attempt])
            execution.save()
            spec = AttemptSpec(
                module=module_name(type(node.task)),
                qualname=type(node.task).__qualname__,
                params=node.task.params,
                inputs=[(name, str(path)) for name, path in local],
                output=str(staging / "output"),
                log=str(log),
                run_id=execution.record.id,
                task_id=node.id,
                attempt=number,
            )
            uploaded: BundleRef | None = None
            if remote:
                outcome, uploaded = self._execute_remote(node, decision, spec)
            else:
                outcome = self._execute(node, spec)
            if outcome.status == SUCCEEDED and execution.cancelled.is_set():
                outcome = AttemptOutcome(INTERRUPTED, "interrupted", outcome.metrics)
            if outcome.status == SUCCEEDED:
                try:
                    if uploaded is not None:
                        output = uploaded
                        self._record(node, decision, output, outcome.metrics)
                    else:
                        output = self._commit(node, decision, Path(spec.output), outcome.metrics)
                except (DatamonError, OSError) as exc:
                    _append(log, f"committing the output failed: {exc}\n")
                    outcome = AttemptOutcome(FAILED, f"commit failed: {exc}", outcome.metrics)
                else:
                    attempt.ended, attempt.status = datetime.now(UTC), SUCCEEDED
                    self.ship(node.id)
                    self._set(task, output=output, metrics=dict(outcome.metrics))
                    self._end(task, SUCCEEDED)
                    return
            attempt.ended, attempt.status, attempt.error = (
                datetime.now(UTC),
                outcome.status,
                outcome.error,
            )
            self._set(task, metrics=dict(outcome.metrics))
            if outcome.status == INTERRUPTED:
                self.ship(node.id)
                self._end(task, INTERRUPTED, outcome.error)
                return
            if number < attempts:
                delay = float(node.task.retry_delay) * float(node.task.retry_backoff) ** (
                    number - 1
                )
                _append(log, f"attempt {number} failed; retrying in {delay:g} s\n")
                self.ship(node.id)
                execution.save()
                if execution.cancelled.wait(delay):
                    self._end(task, INTERRUPTED, "interrupted")
                    return
            else:
                self.ship(node.id)
        self._end(task, FAILED, task.attempts[-1].error if task.attempts else "failed")

    def _end(self, task: TaskRecord, status: str, error: str = "") -> None:
        self._set(task, status=status, error=error, ended=datetime.now(UTC))
        self.ship_final(task.id)
        self.execution.finish_task(task)

    def _set(self, task: TaskRecord, **fields: Any) -> None:
        with self.execution.lock:
            for name, value in fields.items():
                setattr(task, name, value)

    def _note(self, nid: str, message: str) -> None:
        """A line in the step's own log, before its attempts' logs."""
        path = self.execution.work / nid / "step.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        _append(path, message + "\n")
        with self._state:
            logs = self._live.setdefault(nid, [])
            if path not in logs:
                logs.insert(0, path)

    # inputs and outputs --------------------------------------------------------------------

    def _download(self, folder: Path, inputs: list[InputRecord]) -> list[tuple[str, Path]]:
        local = []
        for i, item in enumerate(inputs):
            dest = folder / f"{i}-{_safe(item.name)}"
            Repository(self.store, item.repo).download(item.bundle, str(dest))
            local.append((item.name, dest))
        return local

    def _refresh_inputs(self, local: list[tuple[str, Path]], inputs: list[InputRecord]) -> None:
        """Undo whatever a failed attempt did to its input folders."""
        for (_name, dest), item in zip(local, inputs, strict=True):
            Repository(self.store, item.repo).update(item.bundle, str(dest))

    def _commit(
        self, node: Node, decision: Decision, folder: Path, metrics: dict[str, Any]
    ) -> BundleRef:
        assert isinstance(node.output, BundleOutput)
        output = upload_output(
            self.store,
            folder,
            task_id=node.id,
            family=node.family,
            significant=node.task.significant_params,
            target=node.output,
            author=self.author,
            message=f"{node.id} (run {self.execution.record.id})",
        )
        self._record(node, decision, output, metrics)
        return output

    def _record(
        self, node: Node, decision: Decision, output: BundleRef, metrics: dict[str, Any]
    ) -> None:
        """Commit the fingerprint entry of an output bundle that is already uploaded."""
        assert decision.manifest is not None
        entry = FingerprintEntry(
            format=RUN_FORMAT,
            fingerprint=decision.fingerprint,
            manifest=decision.manifest,
            task=node.id,
            run=self.execution.record.id,
            output=output,
            created=datetime.now(UTC),
            inputs=decision.inputs,
            metrics=dict(metrics),
        )
        self.builder.runs.commit(entry, replace=node.id in self.builder.forced)

    # workers -------------------------------------------------------------------------------

    def _execute(self, node: Node, spec: AttemptSpec) -> AttemptOutcome:
        if self.builder.options.executor == "inline":
            return run_inline(node.task, spec)
        pool = self._get_pool()
        try:
            return pool.submit(run_in_process, spec).result()
        except BrokenProcessPool:
            if self.execution.cancelled.is_set():
                return AttemptOutcome(INTERRUPTED, "interrupted")
            self._drop_pool(pool)
            _append(Path(spec.log), "the worker process died\n")
            return AttemptOutcome(FAILED, "the worker process died")

    def _execute_remote(
        self, node: Node, decision: Decision, spec: AttemptSpec
    ) -> tuple[AttemptOutcome, BundleRef | None]:
        """One attempt on a Dask worker, which downloads, runs and uploads by itself."""
        from datamon.pipeline.daskexec import RemoteAttempt, RemoteInput

        assert isinstance(node.output, BundleOutput)
        options = self.builder.options
        assert options.location is not None
        attempt = RemoteAttempt(
            spec=spec,
            location=options.location,
            inputs=[RemoteInput(i.name, i.repo, i.bundle) for i in decision.inputs],
            family=node.family,
            target=node.output,
            author=self.author,
            message=f"{node.id} (run {self.execution.record.id})",
        )
        result = self._get_dask().run(attempt)
        if result.log:
            _append(Path(spec.log), result.log)
        if result.outcome.status == SUCCEEDED and result.output is None:
            return AttemptOutcome(FAILED, "the worker reported no output", {}), None
        return result.outcome, result.output

    def _get_dask(self) -> DaskPool:
        from datamon.pipeline.daskexec import DaskPool

        with self._pool_lock:
            if self._dask is None:
                self._dask = DaskPool(self.builder.options.scheduler or "")
            return self._dask

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.builder.options.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                )
            return self._pool

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def stop_workers(self) -> None:
        """Ctrl-C: end the worker processes now (their attempts are recorded interrupted)."""
        with self._pool_lock:
            pool, dask = self._pool, self._dask
        if dask is not None:
            dask.stop()
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop running work before Python 3.14.
        processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.terminate()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
            dask, self._dask = self._dask, None
        if dask is not None:
            dask.close()
        if pool is not None:
            pool.shutdown(wait=not self.execution.cancelled.is_set(), cancel_futures=True)

    def internal_failure(self, nid: str, error: BaseException) -> None:
        """A step that broke outside ``run`` (a download, the store): FAILED with the error."""
        task = self.execution.tasks[nid]
        text = "".join(traceback.format_exception(error))
        log = self.execution.work / nid / "step-error.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        _append(log, text)
        with self._state:
            self._live.setdefault(nid, []).append(log)
        summary = f"{type(error).__name__}: {error}"
        if not task.decision:
            self._set(task, decision=RUN, reason=Reason(kind="error", text=summary))
        self._end(task, FAILED, summary)

    # logs and heartbeats -------------------------------------------------------------------

    def _log_bytes(self, nid: str) -> bytes:
        with self._state:
            files = list(self._live.get(nid, []))
        parts = []
        for path in files:
            try:
                body = path.read_bytes()
            except OSError:
                body = b""
            parts.append(f"=== {path.stem} ===\n".encode() + body)
        return b"".join(parts)

    def ship(self, nid: str) -> None:
        """Copy the step's log, all attempts so far, to ``runs/<run>/logs/<task>.log``."""
        data = self._log_bytes(nid)
        with self._state:
            if self._shipped.get(nid) == len(data):
                return
            self._shipped[nid] = len(data)
        self.builder.runs.put_log(self.execution.record.id, nid, data)

    def ship_final(self, nid: str) -> None:
        self._shipped.pop(nid, None)
        self.ship(nid)
        with self._state:
            self._live.pop(nid, None)

    @contextlib.contextmanager
    def monitor(self) -> Iterator[None]:
        """A background thread: ships running steps' logs, refreshes held locks."""
        stop = threading.Event()
        options = self.builder.options
        interval = min(options.log_interval, heartbeat_interval(options.lock_stale_after))

        def loop() -> None:
            beat = time.monotonic()
            while not stop.wait(interval):
                with self._state:
                    live = list(self._live)
                    leases = list(self._leases)
                for nid in live:
                    with contextlib.suppress(DatamonError, OSError):
                        self.ship(nid)
                for lease in leases:
                    with contextlib.suppress(DatamonError):
                        lease.refresh()
                if time.monotonic() - beat >= RECORD_HEARTBEAT:
                    beat = time.monotonic()
                    with contextlib.suppress(DatamonError):
                        self.execution.save()

        thread = threading.Thread(target=loop, name="datamon-run-monitor", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def upload_output(
    store: Store,
    folder: Path,
    *,
    task_id: str,
    family: str,
    significant: dict[str, Any],
    target: BundleOutput,
    author: Author,
    message: str,
) -> BundleRef:
    """Add ``params.json``/``params.txt``, normalise mtimes, upload ``folder`` as a bundle.

    Used by the build (process and inline executors) and by Dask workers, which upload
    their outputs themselves.
    """
    for name in (PARAMS_JSON, PARAMS_TXT):
        if os.path.lexists(folder / name):
            raise TaskDefinitionError(
                f"{task_id} wrote {name} into its output; Datamon writes that file"
            )
    (folder / PARAMS_JSON).write_bytes(
        msgspec.json.format(to_json({"params": significant, "task": family}), indent=2) + b"\n"
    )
    (folder / PARAMS_TXT).write_text(
        "".join(f"{k}={_plain(v)}\n" for k, v in sorted(significant.items()))
    )
    normalize_mtimes(folder)
    repo = output_repo(store, target.repo, task_id, author)
    result = repo.upload(
        str(folder),
        UploadOptions(message=message, author=author, branch=target.branch, label=target.label),
    )
    return BundleRef(
        repo=repo.name,
        bundle=result.bundle_id,
        tree=result.bundle.tree,
        label=target.label,
        branch=target.branch,
    )


def output_repo(store: Store, name: str, task_id: str, author: Author) -> Repository:
    """The output repo ``name``, created if missing (by whichever writer comes first)."""
    try:
        return Repository(store, name)
    except RepoNotFound:
        with contextlib.suppress(RepoExists):
            Repository.create(store, name, f"outputs of pipeline task {task_id}", author)
        return Repository(store, name)


def normalize_mtimes(folder: Path) -> None:
    """Give every entry below ``folder`` (and itself) the mtime :data:`SOURCE_EPOCH`."""
    times = (SOURCE_EPOCH, SOURCE_EPOCH)
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(root, name), times, follow_symlinks=False)
    os.utime(folder, times)


def _input(name: str, up: str, ref: BundleRef | None) -> InputRecord:
    assert ref is not None, f"input {name} from {up} has no output"
    return InputRecord(name=name, task=up, repo=ref.repo, bundle=ref.bundle, tree=ref.tree)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else to_json(value).decode()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "input"


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)

"""The Dask distributed executor: attempts run on a Dask cluster's workers.

Unlike the process and inline executors, a Dask worker reads and writes the store
itself: it opens the store from the build's :class:`StoreLocation` (once per worker
process), downloads the step's input bundles, runs the task, and uploads the output
bundle (moving its label). The build keeps the decisions, the locks and the run record,
and commits the fingerprint entry once the worker reports the uploaded bundle. The
attempt's captured output comes back with the result and is stored with the run.

``distributed`` is imported only when a Dask build starts.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from datamon.api.repository import Repository
from datamon.core.model import Author
from datamon.errors import DatamonError, InvalidArgument
from datamon.pipeline import capture
from datamon.pipeline.executor import upload_output
from datamon.pipeline.location import StoreLocation, shared_store
from datamon.pipeline.records import FAILED, INTERRUPTED, SUCCEEDED, BundleRef
from datamon.pipeline.task import BundleOutput
from datamon.pipeline.worker import AttemptOutcome, AttemptSpec, _attempt, _summary, load_task


@dataclass(frozen=True)
class RemoteInput:
    name: str
    repo: str
    bundle: str


@dataclass(frozen=True)
class RemoteAttempt:
    """Everything a worker needs; ``spec.inputs``, ``output`` and ``log`` are set there."""

    spec: AttemptSpec
    location: StoreLocation
    inputs: list[RemoteInput]
    family: str
    target: BundleOutput
    author: Author
    message: str


@dataclass(frozen=True)
class RemoteOutcome:
    outcome: AttemptOutcome
    log: str
    output: BundleRef | None = None


def run_remote(attempt: RemoteAttempt) -> RemoteOutcome:
    """The Dask task: download inputs, run the task with its log captured, upload."""
    with tempfile.TemporaryDirectory(prefix=f"datamon-{attempt.spec.task_id}-") as tmp:
        work = Path(tmp)
        log_path = work / "attempt.log"
        log_path.touch()
        output: BundleRef | None = None
        with (
            capture.thread_routing(),
            capture.open_log(str(log_path)) as stream,
            capture.captured_thread(stream),
        ):
            try:
                store = shared_store(attempt.location)
                local = []
                for i, item in enumerate(attempt.inputs):
                    dest = work / "inputs" / f"{i}-{item.name}"
                    Repository(store, item.repo).download(item.bundle, str(dest))
                    local.append((item.name, str(dest)))
                task = load_task(attempt.spec)
            except BaseException as exc:
                traceback.print_exc()
                outcome = AttemptOutcome(FAILED, f"cannot prepare the attempt: {_summary(exc)}")
            else:
                spec = replace(
                    attempt.spec, inputs=local, output=str(work / "output"), log=str(log_path)
                )
                outcome = _attempt(task, spec, stream)
                if outcome.status == SUCCEEDED:
                    try:
                        output = upload_output(
                            store,
                            Path(spec.output),
                            task_id=spec.task_id,
                            family=attempt.family,
                            significant=task.significant_params,
                            target=attempt.target,
                            author=attempt.author,
                            message=attempt.message,
                        )
                    except (DatamonError, OSError) as exc:
                        print(f"committing the output failed: {exc}")
                        outcome = AttemptOutcome(FAILED, f"commit failed: {exc}", outcome.metrics)
        return RemoteOutcome(outcome, log_path.read_text(errors="replace"), output)


class DaskPool:
    """A client of the scheduler at ``address``, opened on first use, and its futures."""

    def __init__(self, address: str) -> None:
        if not address:
            raise InvalidArgument("the dask executor needs a scheduler address (tcp://...)")
        self.address = address
        self._client: Any = None
        self._futures: set[Any] = set()
        self._lock = threading.Lock()
        self.cancelled = False

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import distributed
                except ImportError:
                    raise InvalidArgument(
                        "the dask executor needs dask distributed: pip install 'dask[distributed]'"
                    ) from None
                try:
                    client: Any = distributed.Client
                    self._client = client(self.address, set_as_default=False, timeout=30)
                except OSError as exc:
                    raise InvalidArgument(
                        f"cannot reach the dask scheduler {self.address}: {exc}"
                    ) from None
            return self._client

    def run(self, attempt: RemoteAttempt) -> RemoteOutcome:
        client = self._get_client()
        spec = attempt.spec
        key = f"datamon-{spec.run_id}-{spec.task_id}-{spec.attempt}"
        future = client.submit(run_remote, attempt, key=key, pure=False)
        with self._lock:
            self._futures.add(future)
        try:
            result: RemoteOutcome = future.result()
            return result
        except BaseException as exc:
            if self.cancelled:
                return RemoteOutcome(AttemptOutcome(INTERRUPTED, "interrupted"), "")
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = "".join(traceback.format_exception(exc))
            return RemoteOutcome(
                AttemptOutcome(FAILED, f"the dask task failed: {_summary(exc)}"), text
            )
        finally:
            with self._lock:
                self._futures.discard(future)

    def stop(self) -> None:
        """Ctrl-C: cancel every submitted attempt."""
        self.cancelled = True
        with self._lock:
            futures, client = list(self._futures), self._client
        if client is not None and futures:
            with contextlib.suppress(Exception):  # the scheduler may be gone already
                client.cancel(futures)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

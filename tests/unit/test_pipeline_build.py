"""build(): reuse, re-runs with reasons, early cut-off, force, failures, retries, locks."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from pipetasks import (
    CALLS,
    FAIL,
    CycleA,
    Everything,
    Flaky,
    Join,
    NoOutput,
    Report,
    Scale,
    SelfInterrupt,
    Slow,
    Total,
)

from datamon import Author, Repository, Store, UploadOptions
from datamon.core.codecs import to_json
from datamon.errors import (
    DependencyCycle,
    InvalidArgument,
    ParameterError,
    StoreNotFound,
    StoreUnreachable,
)
from datamon.pipeline import BuildOptions, BuildResult, Task, build
from datamon.pipeline.location import StoreLocation
from datamon.pipeline.records import RUN_FORMAT, LockRecord
from datamon.pipeline.runstore import RunStore, lock_key


@pytest.fixture(autouse=True)
def clean_globals() -> Iterator[None]:
    CALLS.clear()
    FAIL.clear()
    yield
    CALLS.clear()
    FAIL.clear()


@pytest.fixture
def store(mem_store: Store, author: Author, tmp_path: Path) -> Store:
    repo = Repository.create(mem_store, "numbers", "input numbers", author)
    for label, values in (("v1", [1, 2, 3, 4, 5]), ("v2", [10, 20, 30])):
        folder = tmp_path / f"numbers-{label}"
        folder.mkdir()
        (folder / "values.txt").write_text("".join(f"{v}\n" for v in values))
        repo.upload(str(folder), UploadOptions(label, author, label=label))
    return mem_store


def run(store: Store, *tasks: Task, **kwargs: object) -> BuildResult:
    options = BuildOptions(author=Author("Ada Lovelace", "ada@example.com"))
    kwargs.setdefault("executor", "inline")
    return build(list(tasks), store=store, options=options, **kwargs)  # type: ignore[arg-type]


def file_of(store: Store, repo: str, bid: str, path: str, tmp: Path) -> str:
    target = Repository(store, repo).download_file(bid, path, str(tmp))
    return Path(target).read_text()


def test_first_build_runs_everything_and_second_reuses_it(store: Store, tmp_path: Path) -> None:
    first = run(store, Total())
    assert first.ok, first.format()
    assert first.ran() == ["Scale", "Clip", "Total"]
    total = first.step("Total")
    assert total.output is not None
    assert file_of(store, "totals", total.output.bundle, "values.txt", tmp_path / "a") == "45\n"
    assert total.metrics == {"total": 45}
    # The output carries its parameters, as Datanectar's targets did.
    params = file_of(store, "scaled", first.step("Scale").output.bundle, "params.txt", tmp_path)  # type: ignore[union-attr]
    assert params == "factor=2\nsource=v1\n"
    assert Repository(store, "totals").label("latest").bundle == total.output.bundle

    CALLS.clear()
    second = run(store, Total())
    assert second.ok
    assert CALLS == []
    assert second.ran() == []
    assert second.reused() == ["Scale", "Clip", "Total"]
    assert second.step("Total").output == total.output
    assert second.step("Total").metrics == {"total": 45}
    assert "same fingerprint" in second.step("Total").reason


def test_a_dry_run_makes_no_store(tmp_path: Path) -> None:
    """With no store at the location, a plan is made against an empty one: a step reading
    a bundle of a repo that does not exist yet is blocked, and nothing is written."""
    where = tmp_path / "no" / "store"
    options = BuildOptions(author=Author("Ada Lovelace", "ada@example.com"))
    plan = build([Total()], dry_run=True, options=options, location=StoreLocation(str(where)))
    assert CALLS == []
    assert plan.run_id is None and not plan.ok
    assert {s.decision for s in plan.steps} == {"BLOCKED"}
    assert plan.steps[0].reason == "repo not found: numbers"
    assert not (tmp_path / "no").exists()
    with pytest.raises(StoreNotFound):  # nothing was made there
        StoreLocation(str(where)).open(create=False)
    # Metadata in a folder that exists, packs in one that does not: neither is made.
    (tmp_path / "meta").mkdir()
    split = StoreLocation(str(tmp_path / "meta"), str(tmp_path / "blob"))
    assert not build([Total()], dry_run=True, options=options, location=split).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta"]
    assert list((tmp_path / "meta").iterdir()) == []
    # A file where the store would be: the plan fails as the build would.
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnreachable, match="not a folder"):
        build(
            [Total()], dry_run=True, options=options, location=StoreLocation(str(tmp_path / "file"))
        )


def test_dry_run_names_the_changed_parameter_and_runs_nothing(store: Store) -> None:
    run(store, Total())
    CALLS.clear()
    plan = run(store, Total(factor=3), dry_run=True)
    assert CALLS == []
    assert plan.run_id is None and plan.ok
    assert plan.step("Scale").decision == "RUN"
    assert plan.step("Scale").reason == "parameter factor changed: 2 -> 3"
    assert plan.step("Clip").decision == "REUSE"
    assert plan.step("Total").decision == "RUN"
    assert "will be rebuilt by Scale-" in plan.step("Total").reason
    text = plan.format()
    assert "plan (dry run)" in text and "parameter factor changed: 2 -> 3" in text
    assert RunStore(store.meta).run_ids() != [] and len(RunStore(store.meta).run_ids()) == 1


def test_changing_one_parameter_reruns_only_what_depends_on_it(store: Store) -> None:
    run(store, Total())
    CALLS.clear()
    result = run(store, Total(factor=3))
    assert result.ok
    assert result.ran() == ["Scale", "Total"]
    assert result.reused() == ["Clip"]
    assert result.step("Total").metrics == {"total": 60}
    assert "input scaled from Scale-" in result.step("Total").reason


def test_insignificant_parameters_do_not_rerun(store: Store) -> None:
    run(store, Scale())
    result = run(store, Scale(verbose=True))
    assert result.reused() == ["Scale"]


def test_a_new_label_target_reruns_with_the_input_named(store: Store) -> None:
    run(store, Scale())
    plan = run(store, Scale(source="v2"), dry_run=True)
    # The nearest earlier step differs in a parameter and in its input.
    assert plan.step("Scale").reason.startswith("parameter source changed")
    assert "input 0" in plan.step("Scale").reason


def test_early_cutoff_reuses_downstream_when_the_output_is_unchanged(store: Store) -> None:
    first = run(store, Report(limit=100))
    CALLS.clear()
    # Every value is below both limits. Clip runs again (its params.txt differs), so
    # ClipTotal runs on the new input, but writes the same files: the tree id of its
    # output is unchanged, so Report's fingerprint is too.
    result = run(store, Report(limit=200))
    assert result.ran() == ["Clip", "ClipTotal"]
    assert result.reused() == ["Report"]
    old, new = first.step("ClipTotal").output, result.step("ClipTotal").output
    assert old is not None and new is not None
    assert old.bundle != new.bundle and old.tree == new.tree


def test_force_reruns_the_step_and_force_downstream_everything_below(store: Store) -> None:
    run(store, Total())
    CALLS.clear()
    forced = run(store, Total(), force=["Scale"])
    assert forced.ran() == ["Scale"]
    assert forced.step("Scale").reason == "forced"
    # Same files came out: downstream is reused (early cut-off).
    assert forced.step("Total").decision == "REUSE"
    CALLS.clear()
    below = run(store, Total(), force=[Scale], force_downstream=True)
    assert below.ran() == ["Scale", "Total"]
    assert below.step("Total").reason.startswith("forced: downstream of Scale-")
    with pytest.raises(InvalidArgument, match="no such task"):
        run(store, Total(), force=["Nope"])


def test_missing_input_bundle_blocks_with_the_reason(store: Store) -> None:
    plan = run(store, Total(), dry_run=True)
    assert plan.ok
    result = run(store, Scale(source="v9"))
    assert not result.ok
    assert result.status == "blocked"
    pinned = result.steps[0]
    assert pinned.decision == "BLOCKED" and "label not found: v9" in pinned.reason
    scale = result.step("Scale")
    assert scale.decision == "BLOCKED" and scale.status == "blocked"
    assert "label not found: v9" in scale.reason
    assert not run(store, Scale(source="v9"), dry_run=True).ok


def test_failure_is_recorded_and_rerun_starts_at_the_failed_step(store: Store) -> None:
    FAIL.add("Total")
    failed = run(store, Total())
    assert not failed.ok and failed.status == "failed"
    total = failed.step("Total")
    assert total.status == "failed" and total.error == "ValueError: total failed"
    assert failed.step("Scale").status == "succeeded"
    assert failed.run_id is not None
    runs = RunStore(store.meta)
    logged = runs.read_log(failed.run_id, total.id).decode()
    assert "Traceback (most recent call last)" in logged
    assert "ValueError: total failed" in logged

    FAIL.clear()
    CALLS.clear()
    again = run(store, Total())
    assert again.ok
    assert again.ran() == ["Total"]
    assert again.reused() == ["Scale", "Clip"]


def test_downstream_of_a_failure_is_skipped_and_independent_work_goes_on(store: Store) -> None:
    FAIL.add("Scale")
    result = run(store, Everything())
    assert result.step("Scale").status == "failed"
    assert result.step("Total").status == "skipped"
    assert result.step("Total").decision == "BLOCKED"
    assert result.step("ClipTotal").status == "succeeded"
    assert result.step("Everything").status == "skipped"


def test_retries_with_backoff_and_every_attempt_in_the_log(store: Store, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    result = run(store, Flaky(counter=str(counter), succeed_on=3))
    assert result.ok
    step = result.step("Flaky")
    assert step.attempts == 3
    record = RunStore(store.meta).load(result.run_id or "")
    attempts = record.task("Flaky").attempts  # type: ignore[union-attr]
    assert [a.status for a in attempts] == ["failed", "failed", "succeeded"]
    assert attempts[0].error == "RuntimeError: flaky failure 1"
    logged = RunStore(store.meta).read_log(record.id, step.id).decode()
    assert "=== attempt-1 ===" in logged and "=== attempt-3 ===" in logged
    assert "retrying in 0.01 s" in logged and "retrying in 0.02 s" in logged
    out_of_tries = run(store, Flaky(counter=str(tmp_path / "c2"), succeed_on=9))
    assert out_of_tries.step("Flaky").status == "failed"
    assert out_of_tries.step("Flaky").attempts == 3


def test_no_output_folder_means_failed(store: Store) -> None:
    result = run(store, NoOutput())
    step = result.step("NoOutput")
    assert step.status == "failed"
    assert "without creating its output folder" in step.error
    assert "nothing" not in [r.name for r in store.repos.all()]


def test_cycle_is_an_error_naming_it(store: Store) -> None:
    with pytest.raises(DependencyCycle) as caught:
        run(store, CycleA())
    assert str(caught.value) == "dependency cycle: CycleA() -> CycleB() -> CycleA()"


def test_unserialisable_parameter_is_an_error_before_anything_runs(store: Store) -> None:
    task = Scale()
    task.__dict__["_param_values"]["factor"] = {1, 2}
    with pytest.raises(ParameterError, match="not JSON-serialisable"):
        run(store, task, dry_run=True)
    assert CALLS == []


def test_run_record_holds_code_environment_resolutions_and_steps(store: Store) -> None:
    result = run(store, Total())
    record = RunStore(store.meta).load(result.run_id or "")
    assert record.format == RUN_FORMAT and record.status == "succeeded"
    assert record.ended is not None and record.ended >= record.started
    assert record.environment.python and "msgspec" in record.environment.packages
    assert record.code.commit is None or len(record.code.commit) == 40
    assert [(r.repo, r.kind, r.name) for r in record.resolutions] == [("numbers", "label", "v1")]
    scale = record.task("Scale")
    assert scale is not None
    assert scale.params == {"factor": 2, "source": "v1", "verbose": False}
    assert scale.significant == ["factor", "source"]
    assert scale.manifest is not None and "pipetasks.py" in scale.manifest.code
    assert scale.inputs[0].repo == "numbers"
    assert scale.reason is not None and scale.reason.kind == "new"
    assert scale.attempts[0].ended is not None
    logged = RunStore(store.meta).read_log(record.id, scale.id).decode()
    assert "scaled 5 values" in logged
    assert "INFO datamon.task.Scale-" in logged and "factor is 2" in logged
    assert "a warning from the module logger" in logged


def test_second_concurrent_run_waits_and_reuses(store: Store) -> None:
    results: list[BuildResult] = []

    def go() -> None:
        results.append(run(store, Slow(tag="shared", seconds=0.6)))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [Slow(tag="shared").task_id] == CALLS
    decisions = sorted(r.step("Slow").decision for r in results)
    assert decisions == ["REUSE", "RUN"]
    reused = next(r for r in results if r.step("Slow").decision == "REUSE")
    assert reused.step("Slow").reason.startswith("computed meanwhile by run ")


def test_a_stale_lock_is_taken_over(store: Store) -> None:
    task = Slow(tag="stale", seconds=0.0)
    plan = run(store, task, dry_run=True)
    fp = plan.step("Slow").fingerprint
    old = datetime.now(UTC) - timedelta(hours=1)
    dead = LockRecord(
        format=RUN_FORMAT,
        fingerprint=fp,
        run="19990101-000000-000000",
        task=task.task_id,
        host="gone",
        pid=1,
        acquired=old,
        heartbeat=old,
    )
    store.meta.put(lock_key(fp), to_json(dead))
    options = BuildOptions(author=Author("a", "a@b"), lock_stale_after=1.0)
    result = build([task], store=store, executor="inline", options=options)
    assert result.ok and result.ran() == ["Slow"]
    assert not store.meta.exists(lock_key(fp))


def test_ctrl_c_marks_the_run_interrupted_and_a_rerun_resumes(store: Store) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(store, SelfInterrupt())
    runs = RunStore(store.meta)
    record = runs.load(runs.run_ids()[-1])
    assert record.status == "interrupted"
    assert record.task("SelfInterrupt").status == "interrupted"  # type: ignore[union-attr]
    assert record.task("Scale").status == "succeeded"  # type: ignore[union-attr]
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run(store, SelfInterrupt())
    # Scale was committed before the interrupt: only the interrupted step ran again.
    assert [c.split("-")[0] for c in CALLS] == ["SelfInterrupt"]


def test_process_pool_runs_independent_tasks_and_captures_their_output(store: Store) -> None:
    result = run(store, Join(), executor="process", workers=2)
    assert result.ok, result.format()
    runs = RunStore(store.meta)
    joined = result.step("Join").output
    assert joined is not None
    for step in result.steps:
        if step.name == "Shout":
            logged = runs.read_log(result.run_id or "", step.id).decode()
            word = "hello" if "hello" in logged else "world"
            assert f"python says {word}" in logged
            assert f"child says {word}" in logged
            assert f"module logger says {word}" in logged
    again = run(store, Join(), executor="process", workers=2)
    assert again.reused() == ["Shout", "Shout", "Join"]


def test_executor_and_workers_are_checked(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="unknown executor"):
        run(store, Scale(), executor="spark")
    with pytest.raises(InvalidArgument, match="workers"):
        run(store, Scale(), workers=0)


def test_record_round_trips_as_json(store: Store) -> None:
    result = run(store, Total())
    data = store.meta.get(f"runs/{result.run_id}.json")
    decoded = msgspec.json.decode(data)
    assert decoded["id"] == result.run_id
    assert {t["id"] for t in decoded["tasks"]} == {s.id for s in result.steps}


def test_a_running_record_without_heartbeat_shows_as_stale(store: Store) -> None:
    result = run(store, Scale())
    record = RunStore(store.meta).load(result.run_id or "")
    now = datetime.now(UTC)
    assert record.shown_status(now) == "succeeded"
    record.status = "running"
    record.updated = now - timedelta(seconds=5)
    assert record.shown_status(now) == "running"
    record.updated = now - timedelta(minutes=5)
    assert record.shown_status(now).startswith("running? (no sign of life since ")


def test_run_ids_of_one_second_sort_by_start() -> None:
    from datetime import UTC, datetime

    from datamon.pipeline.runstore import _RUN_ID, new_run_id

    starts = [
        datetime(2026, 12, 1, 22, 4, 57, micro, tzinfo=UTC) for micro in (30, 500_000, 980_000)
    ]
    ids = [new_run_id(when) for when in starts]
    assert all(_RUN_ID.match(i) for i in ids)
    assert sorted(ids) == ids

"""The benchmark's report: medians, ratios against a peer, target verdicts and the heading."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[tuple[ModuleType, ModuleType]]:
    # The harness imports its modules by their bare names, as `python bench/run.py` does.
    sys.path.insert(0, str(BENCH))
    try:
        import report
        import scenarios

        yield report, scenarios
    finally:
        sys.path.remove(str(BENCH))


def _meta(workloads: list[str]) -> dict[str, Any]:
    return {
        "mode": "full",
        "date": "2026-11-29 03:57 UTC",
        "command": "python bench/run.py",
        "elapsed_s": 79.0,
        "generate_s": 20.0,
        "runs": 3,
        "machine": {"cpu": "x", "cores": 2, "ram": "1 GiB", "kernel": "k", "load_at_start": "0"},
        "versions": {"python": "3.11"},
        "workloads": {w: f"{w} data" for w in workloads},
    }


def _upload_runs(scenarios: ModuleType, ours: list[float], dvc: list[float]) -> list[Any]:
    records = []
    for run, (a, b) in enumerate(zip(ours, dvc, strict=True)):
        records.append(scenarios.Record("W1", "upload", "datamon", run, wall_s=a))
        records.append(scenarios.Record("W1", "upload", "dvc", run, wall_s=b))
    return records


def test_w1_upload_target_uses_the_medians_of_both_tools(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    report, scenarios = bench
    medians = report.Medians(_upload_runs(scenarios, [3.3, 2.9, 3.1], [6.0, 6.4, 5.0]))
    assert medians.ratio("W1", "upload", "wall_s", "dvc") == pytest.approx(3.1 / 6.0)
    verdicts = {t["target"]: t for t in (t.check(medians) for t in report.TARGETS)}
    w1 = verdicts["W1 upload <= 0.5x DVC add+push"]
    assert w1["status"] == "FAIL"
    assert report.fmt_target_value(w1) == "0.52x"
    assert verdicts["W2 upload <= 0.8x restic"]["status"] == "n/a"

    faster = report.Medians(_upload_runs(scenarios, [2.9, 3.0, 2.8], [6.0, 6.4, 5.0]))
    assert report.TARGETS[0].check(faster)["status"] == "PASS"


def test_targets_show_every_run_behind_their_median(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    report, scenarios = bench
    records = _upload_runs(scenarios, [3.3, 2.9, 3.1], [6.0, 6.4, 5.0])
    records += [
        scenarios.Record("W2", "upload", "datamon", run, wall_s=2.5, extra={"files_per_s": rate})
        for run, rate in enumerate([19_380.0, 18_939.0, 20_100.0])
    ]
    medians = report.Medians(records)
    verdicts = {t["target"]: t for t in (t.check(medians) for t in report.TARGETS)}
    w1 = verdicts["W1 upload <= 0.5x DVC add+push"]
    assert w1["runs"] == "datamon 3.300, 2.900, 3.100; dvc 6.000, 6.400, 5.000"
    rate = verdicts["W2 upload >= 20,000 files/s"]
    assert rate["status"] == "FAIL"  # the median, 19,380
    assert rate["runs"] == "datamon 19,380, 18,939, 20,100"
    assert verdicts["W2 upload <= 0.8x restic"]["runs"] == "datamon 2.500, 2.500, 2.500"
    text = report.markdown(_meta(["W1", "W2"]), medians, list(verdicts.values()), [], [])
    row = "| W2 upload >= 20,000 files/s | 19,380 f/s | FAIL | datamon 19,380, 18,939, 20,100 |"
    assert row in text


def test_a_report_is_written_again_from_its_runs_keeping_a_note_added_by_hand(
    bench: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    report, scenarios = bench
    records = _upload_runs(scenarios, [3.3, 2.9, 3.1], [6.0, 6.4, 5.0])
    meta = {**_meta(["W1"]), "probes": []}
    data = {"meta": meta, "targets": [], "records": [r.to_json() for r in records]}
    (tmp_path / "latest.json").write_text(json.dumps({**data, "errors": [], "notes": []}))
    medians = report.Medians(records)
    before = report.markdown(meta, medians, [], [], []).splitlines()
    before[1:1] = ["", "A note on this run."]
    (tmp_path / "latest.md").write_text("\n".join(before) + "\n")

    report.rewrite(tmp_path)
    text = (tmp_path / "latest.md").read_text()
    assert text.splitlines()[:3] == [before[0], "", "A note on this run."]
    assert text.count("A note on this run.") == 1
    assert "| W1 upload <= 0.5x DVC add+push | 0.52x | FAIL | datamon 3.300, 2.900, 3.100" in text
    verdicts = json.loads((tmp_path / "latest.json").read_text())["targets"]
    assert verdicts[0]["runs"] == "datamon 3.300, 2.900, 3.100; dvc 6.000, 6.400, 5.000"


def test_heading_names_the_workloads_of_a_partial_run(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    report, scenarios = bench
    medians = report.Medians(_upload_runs(scenarios, [3.0], [6.0]))
    targets = [t.check(medians) for t in report.TARGETS]

    partial = report.markdown(_meta(["W1", "W2"]), medians, targets, [], [])
    assert partial.splitlines()[0] == (
        "# Datamon benchmark: full-scale run of W1, 2026-11-29 03:57 UTC"
    )
    assert "| upload | wall s | 3.000 | 6.000 | 0.50x |" in partial
    assert "- **W2**" not in partial  # only the workloads that ran are described

    whole = report.markdown(_meta(["W1"]), medians, targets, [], [])
    assert whole.splitlines()[0].startswith("# Datamon benchmark: full-scale run of every workload")


def test_many_file_run_folders_wait_for_the_end_of_their_workload(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import run
    finally:
        sys.path.remove(str(BENCH))
    runner = run.Runner(None, tmp_path, 1, keep=False, settle_s=0.0)
    made: dict[str, Path] = {}

    def body(name: str) -> Any:
        def make(ctx: Any) -> None:
            (ctx.run_dir / "f").write_bytes(b"x")
            made[name] = ctx.run_dir

        return make

    runner.attempt("W1", "datamon", 0, body("W1"))
    runner.attempt("W2", "datamon", 0, body("W2"))
    assert not made["W1"].exists()  # few large files: deleted at once
    assert made["W2"].exists()  # many files: kept until the workload ends
    runner.settle()
    assert not made["W2"].exists()
    assert not runner.errors


def test_warm_reads_every_file_of_a_tree(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import measure
    finally:
        sys.path.remove(str(BENCH))
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"x" * 3_000_000)
    (tmp_path / "g").write_bytes(b"yz")
    (tmp_path / "empty").write_bytes(b"")
    assert measure.warm(tmp_path) == 3_000_002


def test_speed_probes_are_measured_and_reported(
    bench: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    report, scenarios = bench
    sys.path.insert(0, str(BENCH))
    try:
        import measure
    finally:
        sys.path.remove(str(BENCH))
    probe = measure.speed_probe("start", tmp_path)
    assert probe["when"] == "start"
    assert probe["copy_gbps"] > 0 and probe["hash_mbps"] > 0 and probe["create_us"] > 0
    assert list(tmp_path.iterdir()) == []  # the files it made are gone
    # A probe from before the file-creation figure existed renders it as "-".
    old = {k: v for k, v in probe.items() if k != "create_us"}
    assert "create_us" not in measure.speed_probe("start")
    # One that could not create its files says so, and the run goes on.
    assert measure.speed_probe("start", tmp_path / "missing")["create_us"] is None

    probes = [probe, {**probe, "when": "end", "copy_gbps": 3.456, "create_us": 1234.4}, old]
    meta = {**_meta(["W1"]), "probes": probes}
    medians = report.Medians(_upload_runs(scenarios, [3.0], [6.0]))
    text = report.markdown(meta, medians, [t.check(medians) for t in report.TARGETS], [], [])
    lines = text.splitlines()
    header = (
        "| speed probe | UTC | memory copy GB/s | BLAKE3 in cache MB/s | file creation µs | load |"
    )
    assert header in lines
    assert any(line.startswith("| end |") and "| 3.46 |" in line for line in lines)
    assert any(line.startswith("| end |") and "| 1,234 |" in line for line in lines)
    assert sum(" | - | " in line for line in lines if line.startswith("| start |")) == 1
    # A report of a run from before the probes existed still renders.
    assert "speed probe" not in report.markdown(
        _meta(["W1"]), medians, [t.check(medians) for t in report.TARGETS], [], []
    )

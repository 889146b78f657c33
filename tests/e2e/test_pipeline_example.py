"""The example ML pipeline (examples/mlpipe), end to end through the CLI.

A user uploads raw CSV, runs the pipeline, changes one parameter, runs again: only the
steps that depend on the parameter run, and ``run diff`` names it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .support import Datamon, describe

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TARGET = "mlpipe.tasks:Evaluate"
PIPELINE_TIMEOUT = 300.0


def decisions(dm: Datamon, run: str) -> dict[str, str]:
    record = json.loads(dm("run", "show", run, "--json").stdout)
    return {t["family"].rpartition(".")[2]: t["decision"] for t in record["tasks"]}


def test_change_one_parameter_and_only_affected_steps_run(tmp_path: Path) -> None:
    dm = Datamon.at(tmp_path / "user", PYTHONPATH=str(EXAMPLES))
    raw = tmp_path / "raw"
    made = subprocess.run(
        [sys.executable, "-m", "mlpipe.data", str(raw)],
        env=dm.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    dm.prepare("mlpipe-raw", [(raw, "raw export", "--label", "latest")])

    first = dm("run", "start", TARGET, "--workers", "2", timeout=PIPELINE_TIMEOUT)
    run1 = first.stdout.splitlines()[-1].split()[1].rstrip(":")
    assert first.stdout.splitlines()[-1] == f"run {run1}: succeeded", describe(first)
    assert decisions(dm, run1) == {
        "PinnedBundle": "REUSE",
        "Ingest": "RUN",
        "Clean": "RUN",
        "Features": "RUN",
        "Train": "RUN",
        "Evaluate": "RUN",
    }

    plan = dm("run", "start", TARGET, "--param", "C=0.1", "--dry-run")
    assert "parameter C changed: 1.0 -> 0.1" in plan.stdout, describe(plan)
    assert "REUSE   Features-" in plan.stdout

    second = dm("run", "start", TARGET, "--param", "C=0.1", timeout=PIPELINE_TIMEOUT)
    run2 = second.stdout.splitlines()[-1].split()[1].rstrip(":")
    assert decisions(dm, run2) == {
        "PinnedBundle": "REUSE",
        "Ingest": "REUSE",
        "Clean": "REUSE",
        "Features": "REUSE",
        "Train": "RUN",
        "Evaluate": "RUN",
    }

    record = json.loads(dm("run", "show", run2, "--json").stdout)
    evaluate = next(t for t in record["tasks"] if t["family"].endswith(".Evaluate"))
    assert 0.5 < evaluate["metrics"]["accuracy"] <= 1.0
    assert set(evaluate["metrics"]) == {"accuracy", "f1", "roc_auc", "test_rows"}
    assert record["resolutions"][0]["name"] == "latest"
    assert "scikit-learn" in record["environment"]["packages"]

    diff = dm("run", "diff", run1, run2)
    assert "parameter C: 1.0 -> 0.1" in diff.stdout, describe(diff)
    assert "modified metrics.json" in diff.stdout
    assert "RUN -> REUSE: output mlpipe-features@" in diff.stdout
    found = json.loads(dm("run", "diff", run1, run2, "--json").stdout)
    changed = {
        (t["family"].rpartition(".")[2], p["name"]) for t in found["tasks"] for p in t["params"]
    }
    assert changed == {("Train", "C"), ("Evaluate", "C")}

    logs = dm("run", "logs", run2, "Train")
    assert "train accuracy" in logs.stdout and "C=0.1" in logs.stdout
    listed = json.loads(dm("run", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run1, run2]
    assert [r["ran"] for r in listed] == [5, 2]

"""run diff: what changed between two runs, and why each step ran."""

from __future__ import annotations

from pipetasks import Report, Total
from test_pipeline_build import clean_globals, run, store

from datamon import Store
from datamon.pipeline.rundiff import diff_runs, format_diff
from datamon.pipeline.runstore import RunStore

__all__ = ["clean_globals", "store"]


def test_diff_names_parameters_files_and_root_causes(store: Store) -> None:
    first = run(store, Total())
    second = run(store, Total(factor=3))
    runs = RunStore(store.meta)
    a, b = runs.load(first.run_id or ""), runs.load(second.run_id or "")
    found = diff_runs(a, b, store)
    assert found.params() == ["Scale.factor", "Total.factor"]
    assert found.added == [] and found.removed == []
    assert found.edges == []
    assert found.code == []
    by_family = {t.family.rpartition(".")[2]: t for t in found.tasks}
    scale = by_family["Scale"]
    assert scale.old != scale.new
    assert [(c.name, c.old, c.new) for c in scale.params] == [("factor", 2, 3)]
    assert scale.output is not None
    assert ("modified", "values.txt") in scale.output.files
    assert ("modified", "params.txt") in scale.output.files
    total = by_family["Total"]
    # Total's own parameter changed too: it is a root cause itself.
    assert total.root_cause == []
    assert [i.name for i in total.inputs] == ["scaled"]
    clip = by_family["Clip"]
    assert clip.params == [] and clip.output is None and clip.new_decision == "REUSE"
    text = "\n".join(format_diff(found))
    assert "parameter factor: 2 -> 3" in text
    assert "modified values.txt" in text
    assert "RUN -> REUSE: output clipped@" in text


def test_root_cause_is_traced_through_unchanged_steps(store: Store) -> None:
    first = run(store, Report(limit=100))
    second = run(store, Report(limit=200))
    runs = RunStore(store.meta)
    found = diff_runs(runs.load(first.run_id or ""), runs.load(second.run_id or ""), store)
    clip_total = next(t for t in found.tasks if t.family.endswith(".ClipTotal"))
    assert clip_total.new_decision == "RUN"
    clip = second.step("Clip").id
    assert clip_total.root_cause == [f"{clip}: parameter limit changed: 100 -> 200"]
    assert clip_total.output is not None and clip_total.output.files == []
    report = next(t for t in found.tasks if t.family.endswith(".Report"))
    assert report.new_decision == "REUSE"
    assert "(same files)" in "\n".join(format_diff(found))


def test_dag_changes_are_listed(store: Store) -> None:
    first = run(store, Report())
    second = run(store, Total())
    runs = RunStore(store.meta)
    found = diff_runs(runs.load(first.run_id or ""), runs.load(second.run_id or ""))
    added = {t.split("-")[0] for t in found.added}
    removed = {t.split("-")[0] for t in found.removed}
    assert added == {"Scale", "Total"}
    assert removed == {"ClipTotal", "Report"}
    assert any(e.startswith("+ ") and "Total-" in e for e in found.edges)
    assert any(e.startswith("- ") and "Report-" in e for e in found.edges)
